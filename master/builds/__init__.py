"""A build job's life: what is built (the build plan), its states (jobs),
dispatch, reconciling, rebuilds, the skip list, builders' liveness and live logs."""
