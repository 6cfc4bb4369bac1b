"""The index and its copies: accepting wheels, the Simple pages, the static
copy, pushes to other indexes, and fsck."""
