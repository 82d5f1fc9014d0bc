"""Local worker processes: the pull loop (:mod:`.pull`), the supervisor that starts and
restarts them (:mod:`.supervisor`) and the runs built on both (:mod:`.fleet`)."""
