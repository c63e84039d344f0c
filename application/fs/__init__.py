"""The rooms of the file system service (issue 13): each module does one job for
``FileSystemService`` (application/filesystem.py), which keeps the name operations and delegates.

A package rather than ``application/fs_*.py`` files: the rooms belong to one service and are
used through it (the FUSE adapter, adapters/fuse_ops.py, calls only ``FileSystemService``), so
they sit together, beside the pure rules they apply (domain/fs/). The old public names
(``FsIndexer``, ``encode_struct``, ``decode_struct``, ``Attr``, ``SetAttr``, ...) are re-exported
by application/filesystem.py, so callers keep importing them from there.

- ``values``: what the operations take and return (``Attr``, ``StatFs``, ``SetAttr``) and their
  flag numbers;
- ``codec``: structured payloads (one format byte, then the encoding);
- ``indexer``: ``FsIndexer``, the tree view folded from events (replay and live alike);
- ``object_keys``: the per-inode object keys of an encrypted chain;
- ``handles``: the handle table (open files and directories) and the kernel's lookup counts;
- ``pages``: the page cache and the write buffer of file contents;
- ``xattrs``: extended attributes, one event per inode;
- ``conflicts``: conflict copies of files two replicas changed apart (replication repair).
"""
