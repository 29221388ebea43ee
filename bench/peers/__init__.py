"""The systems keyval is measured against, behind adapters the benchmark suites share.

- :mod:`bench.peers.framed_log`: a pure-Python framed log (struct header + ``zlib.crc32`` +
  buffered file), the baseline for keyval's C WAL; also its CRC-checking reader.
- :mod:`bench.peers.logs`: keyval's WAL and every log-shaped peer (framed log, bare
  ``os.write`` + ``fdatasync``, sqlite3, LMDB, RocksDB) behind one ``LogStore`` interface.

A peer whose package is not installed raises ``PeerUnavailable`` with the reason; the suites
turn that into ``pytest.skip(reason)`` so the report lists it instead of silently omitting it.
"""
