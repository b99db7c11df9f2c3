"""Miner process exit codes: how the meta-miner tells why its miner stopped; and how long a miner
waits in its process for its next generation (the meta-miner leaves it alone that long)."""

REFORM_WAIT_S = 30.0  # a rank whose generation ended waits this long in its process for the next one

OK = 0
ERROR = 1  # unexpected failure: restart with backoff
USAGE = 2  # bad flags: restarting will not help
GROUP_FAILURE = 3  # a peer died / a collective timed out: the generation is broken
REASSIGN = 4  # the generation changed: fetch the new assignment and relaunch
DIVERGED = 5  # this rank's state disagrees with the agreed one: relaunch and reload

NAMES = {
    OK: "ok",
    ERROR: "error",
    USAGE: "usage",
    GROUP_FAILURE: "group failure",
    REASSIGN: "reassigned",
    DIVERGED: "diverged",
}
