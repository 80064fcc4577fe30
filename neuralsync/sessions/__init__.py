"""Many processes, one store: the session registry (:mod:`.registry`), the cross-process change
feed (:mod:`.feed`) and growth tracking (:mod:`.growth`). No daemon: every process opens the file."""
