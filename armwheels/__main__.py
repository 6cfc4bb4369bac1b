import sys

from armwheels.cli import main

sys.exit(main())
