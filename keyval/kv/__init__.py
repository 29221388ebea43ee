"""The replicated key/value service: wire frames and TCP transport, server, client, and the
linearizability checker its tests judge histories with."""
