// Package net is the framed binary transport between sheep (sheepdog
// daemons) over TCP, plus a small request/response channel for the admin
// CLI on the same port. Payloads are opaque bytes; the daemon encodes the
// core messages inside them.
//
// # Connections
//
// A Transport listens on one address. Peer traffic is one-directional:
// to send to node B, node A dials B and only A writes on that connection;
// B delivers each frame to Config.OnMessage with from set to A's node id.
// B→A traffic uses a connection B dials, so there are no dial races and
// no connection sharing to negotiate. Each peer gets Config.ConnsPerPeer
// outbound connections ("lanes"); Send picks lane%ConnsPerPeer, so frames
// with the same lane key stay in order while independent traffic (for
// example recovery and client I/O) is spread over several connections.
//
// Each lane has a queue and a writer goroutine that encodes frames into a
// bufio.Writer and flushes when the queue is momentarily empty, so bursts
// share system calls. A Batch lets an event loop skip that hand-off: frames
// it sends to a lane whose writer is idle stay queued until Batch.Flush,
// which writes them from the caller in one non-blocking writev and leaves
// only what the socket did not take to the writer. On the receiving side,
// Config.OnDrained tells when the frames that arrived together have been
// delivered. Every write has a deadline (Config.WriteTimeout). The
// per-peer queue is bounded by Config.QueueLen: when it is full Send
// returns ErrQueueFull at once, which is the back-pressure signal. A peer
// that stops reading therefore fills its own queue and affects no other
// peer; QueueLen(to) lets callers throttle bulk traffic early.
//
// A failed connection is redialed when there are frames to send. If the
// dial (connect or handshake) fails, the lane's queued frames are
// dropped, the outage is logged once (and its end once), and Sends to
// that peer are dropped until a backoff expires; the backoff doubles from
// 50ms to at most 1s per failed dial and resets on success. Callers
// retransmit what matters, so stale traffic does not pile up.
//
// Admin connections are request/response: the client sends requests with
// ids, the server runs Config.OnRequest for each in its own goroutine (at
// most 64 at a time per connection) and answers with a response or an
// error frame carrying the handler's error text. Client.Call matches
// answers by id, so calls on one Client may run concurrently.
//
// Malformed input (bad magic, unknown type or flags, length over
// Config.MaxFrame, CRC mismatch, truncation, a frame type that does not
// belong on the connection) closes only that connection and is logged
// with the remote address. Handshakes have a deadline
// (Config.HandshakeTimeout); dials have Config.DialTimeout.
//
// # TLS
//
// With Config.TLS, every accepted connection starts with a TLS handshake
// (TLS.Server) and every peer dial too (TLS.Client); DialTLS is Dial over
// TLS. The sheepdog handshake and frames below then run inside TLS,
// unchanged. Package certs builds the configurations for mutual TLS with a
// cluster CA: TLS 1.3 only, a certificate of the cluster CA required of
// both sides. The TLS handshake is bounded by Config.HandshakeTimeout like
// the hello. An inbound handshake that fails is counted by reason in
// Stats.TLSRefused (no_cert, unknown_ca, bad_cert, bad_version, not_tls,
// timeout, other) and logged with that reason (at most ten warnings a
// second; the rest at debug level). A dialer that sends a plain hello to a
// TLS listener gets a plain ack with status 3 (TLS required) and a reason,
// so that an admin command without --tls-dir says what to do; a TLS
// dialer reaching a plain listener is logged as such there. With TLS 1.3
// a client learns that the server refused its certificate only when it
// reads, so a dialer reports that from the ack it waited for. Dial errors
// of TLS come as a *TLSError, whose Reason says what went wrong in the
// user's terms.
//
// Accepted connections are capped per remote IP address
// (Config.MaxConnsPerIP, default 64); more are closed at once and
// counted in Stats.ConnsRefused, so one host that opens hundreds of idle
// connections cannot exhaust a node's descriptors for everybody else.
//
// A TLS connection is not a bare socket, so a Batch cannot write to it
// directly: its frames always go through the lane's writer goroutine,
// and the socket under TLS still uses raw system calls (nowait.Conn).
//
// # Wire format
//
// All integers are big-endian.
//
// Handshake. The dialer sends a 16-byte hello:
//
//	offset size field
//	0      4    magic 0x53444F47 ("SDOG")
//	4      2    protocol version (ProtocolVersion)
//	6      1    role: 1 = peer, 2 = admin
//	7      1    reserved, 0
//	8      8    node id of the dialer (0 for admin clients)
//
// The listener answers with an 18-byte ack followed by a reason:
//
//	offset size field
//	0      4    magic 0x53444F47 ("SDOG")
//	4      2    protocol version of the listener
//	6      1    status: 0 = accepted, 1 = version not supported,
//	            2 = role not served, 3 = TLS required (sent in plain
//	            text by a TLS listener to a plain hello)
//	7      1    reserved, 0
//	8      8    node id of the listener
//	16     2    reason length n (at most 1024)
//	18     n    reason text (UTF-8), empty when accepted
//
// On any status other than 0 the listener closes the connection; the
// dialer reports ErrVersion (naming both versions) or ErrRejected with the
// reason. A hello with a bad magic is not answered. The magic and version
// fields stay at these offsets in every future version, so mismatched
// versions can always tell each other so. A peer dialer also checks that
// the listener's node id is the node it meant to reach (ErrWrongNode).
//
// Frames. After an accepted handshake the connection carries frames, each
// a 24-byte header followed by the payload:
//
//	offset size field
//	0      4    magic 0x53444652 ("SDFR")
//	4      1    type: 1 = peer message, 2 = admin request,
//	            3 = admin response, 4 = admin error (payload = error text)
//	5      1    flags, 0 (no flags are defined; others are rejected)
//	6      2    reserved, 0
//	8      4    payload length (at most the receiver's MaxFrame)
//	12     4    CRC32C (Castagnoli) of the payload
//	16     8    request id (admin frames; 0 on peer messages)
//	24     n    payload
//
// Peer connections carry only type 1 from dialer to listener; the
// listener never writes after the ack. Admin connections carry type 2
// from client to server and types 3 and 4 back, with the id of the
// request they answer.
package net
