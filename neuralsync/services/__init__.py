"""Services over a whole store: integrity (:mod:`.doctor`), maintenance (:mod:`.maintenance`) and the
performance monitor (:mod:`.monitor`)."""
