"""Files on disk: the Arrow feature store, ingestion, atomic writes.

The lowest layer of affvx: it imports no other affvx package. Import from the submodules
(`affvx.storage.reader`, `affvx.storage.writer`, ...); this file stays empty so that commands
which never touch features do not pay for importing pyarrow.
"""
