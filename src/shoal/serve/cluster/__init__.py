"""The cohort on Ray Serve: replicas of the whole single-host server across a cluster's nodes
(``shoal serve COHORT --ray``, or ``serve deploy`` of a config file). Ray is an optional extra
(``pip install -e .[ray]``); only ``deployment`` and ``launch`` import it, and only when asked."""
