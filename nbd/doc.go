// Package nbd is an NBD (Network Block Device) server. It speaks the
// protocol of doc/proto.md in github.com/NetworkBlockDevice/nbd to clients
// such as QEMU, qemu-img, qemu-nbd, libnbd (nbdinfo, nbdcopy) and fio, and
// knows nothing about sheepdog: it serves the Volumes a Backend opens by
// export name (for sheepdog, the VDI name).
//
// # Handshake
//
// Only fixed newstyle negotiation is offered; clients that do not set
// NBD_FLAG_C_FIXED_NEWSTYLE, or set unknown client flags, are
// disconnected. NBD_FLAG_NO_ZEROES is offered and honoured. Supported
// options: NBD_OPT_EXPORT_NAME, NBD_OPT_ABORT, NBD_OPT_LIST, NBD_OPT_STARTTLS,
// NBD_OPT_INFO and NBD_OPT_GO (replying NBD_INFO_EXPORT, NBD_INFO_NAME and
// NBD_INFO_DESCRIPTION when asked, and NBD_INFO_BLOCK_SIZE always),
// NBD_OPT_STRUCTURED_REPLY, and NBD_OPT_LIST_META_CONTEXT /
// NBD_OPT_SET_META_CONTEXT for the one context "base:allocation". Other
// options get NBD_REP_ERR_UNSUP, malformed ones NBD_REP_ERR_INVALID.
// Backend.Open errors are reported in the option reply with their text:
// ErrUnknownExport as NBD_REP_ERR_UNKNOWN, ErrBusy (the VDI is attached
// elsewhere) and ErrPermission as NBD_REP_ERR_POLICY. NBD_OPT_INFO opens
// the volume just long enough to describe it.
//
// # TLS
//
// With Server.TLSConfig set, the server is in the spec's FORCEDTLS mode:
// NBD_OPT_STARTTLS is answered with NBD_REP_ACK and the TLS handshake
// follows on the socket, after which option haggling starts afresh over
// TLS and the transmission phase runs over it too. Before that, every
// option but NBD_OPT_STARTTLS and NBD_OPT_ABORT gets NBD_REP_ERR_TLS_REQD,
// NBD_OPT_EXPORT_NAME (which cannot be answered with an error) ends the
// connection, and plain-text bytes sent ahead of the TLS handshake end it
// too. A second NBD_OPT_STARTTLS gets NBD_REP_ERR_INVALID. Which clients
// may connect is the TLS config's business (ClientAuth and ClientCAs: a
// client certificate from the cluster CA for sheepdog). Without a
// TLSConfig the server is in NOTLS mode and NBD_OPT_STARTTLS gets
// NBD_REP_ERR_POLICY.
//
// # Resource limits
//
// Server.HandshakeTimeout bounds the whole handshake (TLS included), so a
// client that trickles its options byte by byte is cut off; a connection
// in its handshake holds a 4 KiB read buffer, the larger transmission
// buffer coming only after it. Server.MaxConns bounds the connections
// served at once: one beyond it closes the oldest connection still in its
// handshake, so connections opened and left idle cannot lock other
// clients out, and is itself closed only when every connection is past
// its handshake. Server.MaxInFlight bounds the requests of one
// connection.
//
// # Transmission
//
// Announced transmission flags: HAS_FLAGS, SEND_FLUSH, SEND_FUA,
// SEND_TRIM, SEND_WRITE_ZEROES, SEND_FAST_ZERO, SEND_DF (only with
// structured replies) and READ_ONLY for read-only volumes; never
// CAN_MULTI_CONN. Commands: READ, WRITE, DISC, FLUSH, TRIM, WRITE_ZEROES
// (FUA, NO_HOLE, FAST_ZERO), BLOCK_STATUS (REQ_ONE) and CACHE (accepted as
// a no-op, not announced). Simple replies are used unless structured
// replies were negotiated; then reads answer with one final OFFSET_DATA
// chunk, errors with an ERROR chunk carrying a message, block status with
// one BLOCK_STATUS chunk and other successes with a NONE chunk.
//
// Requests run concurrently on per-connection worker goroutines, at most
// Server.MaxInFlight per connection (reading stops while that many are in
// flight), and are answered as they complete, so replies can be out of
// order. Replies are never interleaved: they are queued, and whichever
// goroutine finds no write in progress writes everything queued with one
// writev, so replies completing together share a system call. Read data
// goes from the buffer the volume filled straight to the socket, without
// another copy.
//
// A volume that implements Submitter takes reads and writes without a
// worker: the reader goroutine submits each request and goes on reading,
// tells the volume when the requests that arrived together are all
// submitted (Drained), and the volume's completion callback queues the
// reply. When that reply answers the only request in flight and nothing
// is being written, the callback writes it at once if the socket takes it
// without waiting; otherwise a writer goroutine writes the queue. A client
// with one request at a time is then served without any goroutine
// hand-off, and a busy one with batched replies.
//
// Invalid requests are answered with an error and the connection keeps
// serving: unknown commands and invalid flags get NBD_EINVAL; reads,
// trims, cache and block status beyond the end NBD_EINVAL; writes and
// write zeroes beyond the end NBD_ENOSPC; writes, trims and write zeroes on
// a read-only export NBD_EPERM; reads and writes longer than the maximum
// block size (Server.MaxPayload), or not aligned to a volume's minimum
// block size, NBD_EINVAL. The payload of a rejected write is read and
// discarded to stay in sync; only a payload beyond max(128 MiB,
// 2×MaxPayload) is treated as denial of service and drops the connection
// ("Block size constraints" allows a hard disconnect). Zero-length reads,
// writes, trims and write zeroes succeed without touching the volume.
// A request with a bad magic drops the connection: the stream cannot be
// trusted after it.
//
// Volume errors map to NBD errors (see ErrNoSpace and friends; anything
// unknown is NBD_EIO). Trim returning ErrNotSupported is reported as
// success; Zero returning ErrNotSupported is emulated with writes unless
// NBD_CMD_FLAG_FAST_ZERO was set, which gets NBD_ENOTSUP.
//
// # Lifetime
//
// Volume calls get a context that is not cancelled when the client
// disconnects or the server shuts down: a request that has started always
// completes. When the client sends NBD_CMD_DISC, hangs up, or breaks the
// protocol, the server stops reading, waits for the in-flight requests
// (sending their replies if it still can) and then calls Volume.Close
// once. Serve stops the same way when its context is done.
package nbd
