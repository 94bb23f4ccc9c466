package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"strings"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
	"github.com/sheepdog-go/sheepdog/internal/cork"
)

// session is what the handshake settled for the transmission phase.
type session struct {
	name        string
	vol         Volume
	size        uint64
	flags       uint16 // transmission flags sent to the client
	readOnly    bool
	structured  bool   // NBD_OPT_STRUCTURED_REPLY negotiated
	metaContext uint32 // ID of base:allocation, 0 if not selected for this export

	minBlock, prefBlock, maxBlock uint32
}

// negotiator runs the handshake phase of one connection.
type negotiator struct {
	c  *conn
	bw *bufio.Writer

	noZeroes     bool   // client set NBD_FLAG_C_NO_ZEROES
	structured   bool   // NBD_OPT_STRUCTURED_REPLY acknowledged
	metaSelected bool   // base:allocation selected by the last SET_META_CONTEXT
	metaExport   string // export name of that SET_META_CONTEXT
	tls          bool   // the connection was upgraded with NBD_OPT_STARTTLS
	refusedTLS   bool   // an option was refused with NBD_REP_ERR_TLS_REQD
}

// Errors ending a handshake on a TLS server, for Server.Refused.
var (
	errTLSRequired  = errors.New("TLS is required")
	errTLSHandshake = errors.New("TLS handshake failed")
)

// handshake runs fixed newstyle negotiation ("Handshake" in the spec).
// It returns the session to serve, or (nil, nil) when the client ended
// the session with NBD_OPT_ABORT.
func (c *conn) handshake(ctx context.Context) (*session, error) {
	// The deadline and the shutdown interruption are set on the socket
	// itself, so that they hold across NBD_OPT_STARTTLS (the TLS
	// handshake included) and whatever c.nc is meanwhile.
	raw := c.nc
	if d := c.srv.handshakeTimeout(); d > 0 {
		raw.SetDeadline(time.Now().Add(d))
	}
	// Interrupt blocked reads when the server shuts down.
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Now()) })
	n := &negotiator{c: c, bw: bufio.NewWriterSize(c.nc, 4096)}
	sess, err := n.run(ctx)
	stop()
	if sess == nil && ctx.Err() == nil {
		reason := refusalReason(err)
		if n.refusedTLS && !n.tls {
			reason = "tls-required" // whatever the client did next
		}
		if reason != "" {
			c.srv.refused(reason)
		}
	}
	if ctx.Err() != nil {
		if sess != nil {
			if cerr := sess.vol.Close(); cerr != nil {
				c.log.Warn("nbd: closing volume", "err", cerr)
			}
		}
		return nil, errShutdown
	}
	if err != nil {
		return nil, err
	}
	raw.SetDeadline(time.Time{})
	return sess, nil
}

func (n *negotiator) run(ctx context.Context) (*session, error) {
	c := n.c
	greeting := protocol.NegotiationNewstyleHeader{
		OldstyleMagic:  magicNBD,
		OptionMagic:    magicOption,
		HandshakeFlags: flagFixedNewstyle | flagNoZeroes,
	}
	if err := binary.Write(n.bw, binary.BigEndian, greeting); err != nil {
		return nil, fmt.Errorf("writing greeting: %w", err)
	}
	if err := n.bw.Flush(); err != nil {
		return nil, fmt.Errorf("writing greeting: %w", err)
	}
	var clientFlags uint32
	if err := binary.Read(c.br, binary.BigEndian, &clientFlags); err != nil {
		return nil, fmt.Errorf("reading client flags: %w", err)
	}
	// "the server MUST drop the TCP connection if the client sets an
	// unknown flag". We choose not to honour plain newstyle clients (the
	// spec allows either): only fixed newstyle can report errors.
	if unknown := clientFlags &^ (clientFlagFixedNewstyle | clientFlagNoZeroes); unknown != 0 {
		return nil, protoErrorf("unknown client flags %#x", unknown)
	}
	if clientFlags&clientFlagFixedNewstyle == 0 {
		return nil, protoErrorf("client did not set NBD_FLAG_C_FIXED_NEWSTYLE; only fixed newstyle negotiation is supported")
	}
	n.noZeroes = clientFlags&clientFlagNoZeroes != 0

	for {
		var h protocol.NegotiationOptionHeader
		if err := binary.Read(c.br, binary.BigEndian, &h); err != nil {
			return nil, fmt.Errorf("reading option header: %w", err)
		}
		if h.OptionMagic != magicOption {
			return nil, protoErrorf("bad option magic %#x", h.OptionMagic)
		}
		c.log.Debug("nbd: option", "option", optName(h.ID), "id", h.ID, "length", h.Length)
		if h.ID == optAbort {
			return nil, n.abort(h.Length)
		}
		if c.srv.TLSConfig != nil && !n.tls && h.ID != optStartTLS {
			if err := n.requireTLS(h); err != nil {
				return nil, err
			}
			continue
		}
		if h.Length > maxOptionLength {
			if err := n.skipOversized(h); err != nil {
				return nil, err
			}
			continue
		}
		data := make([]byte, h.Length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return nil, fmt.Errorf("reading data of option %s: %w", optName(h.ID), err)
		}
		if ctx.Err() != nil {
			// "SHOULD error further options ... with NBD_REP_ERR_SHUTDOWN"
			n.reply(h.ID, repErrShutdown, []byte("server is shutting down"))
			n.bw.Flush()
			return nil, errShutdown
		}
		sess, done, err := n.option(ctx, h.ID, data)
		if err == nil {
			if ferr := n.bw.Flush(); ferr != nil {
				err = fmt.Errorf("writing reply to option %s: %w", optName(h.ID), ferr)
			}
		}
		if err != nil {
			if sess != nil {
				if cerr := sess.vol.Close(); cerr != nil {
					c.log.Warn("nbd: closing volume", "err", cerr)
				}
			}
			return nil, err
		}
		if done {
			return sess, nil
		}
	}
}

// abort handles NBD_OPT_ABORT, a soft disconnect: "The server MUST reply
// with NBD_REP_ACK", and "SHOULD ignore any data sent by the client".
func (n *negotiator) abort(length uint32) error {
	if length > maxOptionDiscard {
		return protoErrorf("option ABORT carries %d bytes of data", length)
	}
	if _, err := io.CopyN(io.Discard, n.c.br, int64(length)); err != nil {
		return fmt.Errorf("skipping data of option ABORT: %w", err)
	}
	// The client may already have hung up, so a write error is fine.
	n.reply(optAbort, repAck, nil)
	n.bw.Flush()
	return nil
}

// requireTLS refuses an option other than NBD_OPT_STARTTLS and
// NBD_OPT_ABORT before TLS on a server that requires it ("FORCEDTLS").
func (n *negotiator) requireTLS(h protocol.NegotiationOptionHeader) error {
	if h.ID == optExportName {
		// "as this request cannot error, it MUST terminate the session"
		n.c.log.Info("nbd: refused: NBD_OPT_EXPORT_NAME without TLS")
		return fmt.Errorf("NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS: %w", errTLSRequired)
	}
	if h.Length > maxOptionDiscard {
		return protoErrorf("option %s carries %d bytes of data", optName(h.ID), h.Length)
	}
	if _, err := io.CopyN(io.Discard, n.c.br, int64(h.Length)); err != nil {
		return fmt.Errorf("skipping data of option %s: %w", optName(h.ID), err)
	}
	n.c.log.Info("nbd: option refused: TLS required", "option", optName(h.ID), "id", h.ID)
	n.refusedTLS = true
	n.replyError(h.ID, repErrTLSReqd, "TLS required: this server takes NBD_OPT_STARTTLS first")
	return n.bw.Flush()
}

// startTLS handles NBD_OPT_STARTTLS: NBD_REP_ACK, then the TLS handshake
// on the socket, after which option haggling goes on over TLS.
func (n *negotiator) startTLS(ctx context.Context, data []byte) error {
	c := n.c
	switch {
	case c.srv.TLSConfig == nil:
		// NOTLS mode: "NBD_REP_ERR_POLICY (if it does not support TLS
		// for policy reasons)".
		return n.replyError(optStartTLS, repErrPolicy, "TLS is not configured on this server")
	case n.tls:
		return n.replyError(optStartTLS, repErrInvalid, "TLS is already negotiated")
	case len(data) != 0:
		return n.replyError(optStartTLS, repErrInvalid, "NBD_OPT_STARTTLS takes no data")
	}
	if err := n.reply(optStartTLS, repAck, nil); err != nil {
		return err
	}
	if err := n.bw.Flush(); err != nil {
		return fmt.Errorf("replying to NBD_OPT_STARTTLS: %w", err)
	}
	// The client sends its ClientHello only once it has read our ACK:
	// anything already buffered was sent in plain text ahead of it and
	// must not be taken as coming over TLS.
	if c.br.Buffered() != 0 {
		return protoErrorf("%d bytes sent after NBD_OPT_STARTTLS before its reply", c.br.Buffered())
	}
	ck := cork.New(c.nc)
	tc := tls.Server(ck, c.srv.TLSConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.log.Warn("nbd: TLS handshake refused", "err", err)
		return fmt.Errorf("%w: %w", errTLSHandshake, err)
	}
	st := tc.ConnectionState()
	client := ""
	if len(st.PeerCertificates) > 0 {
		client = st.PeerCertificates[0].Subject.CommonName
	}
	c.log = c.log.With("tls_client", client)
	c.log.Info("nbd: TLS established", "version", tls.VersionName(st.Version),
		"cipher", tls.CipherSuiteName(st.CipherSuite))
	c.nc, c.cork = tc, ck
	c.br.Reset(tc)
	n.bw.Reset(tc)
	n.tls = true
	// Nothing negotiated in plain text carries over (only ABORT and
	// STARTTLS were accepted, but be explicit).
	n.structured, n.metaSelected, n.metaExport = false, false, ""
	return nil
}

// skipOversized handles an option whose data exceeds maxOptionLength.
func (n *negotiator) skipOversized(h protocol.NegotiationOptionHeader) error {
	// NBD_OPT_EXPORT_NAME cannot be answered with an error, and a huge
	// option is a denial of service: hard disconnect ("Termination of the
	// session during option haggling").
	if h.ID == optExportName || h.Length > maxOptionDiscard {
		return protoErrorf("option %s carries %d bytes of data", optName(h.ID), h.Length)
	}
	if _, err := io.CopyN(io.Discard, n.c.br, int64(h.Length)); err != nil {
		return fmt.Errorf("skipping data of option %s: %w", optName(h.ID), err)
	}
	typ := uint32(repErrTooBig)
	if !knownOption(h.ID) {
		typ = repErrUnsup
	}
	n.replyError(h.ID, typ, "option data of %d bytes exceeds the limit of %d", h.Length, maxOptionLength)
	return n.bw.Flush()
}

func knownOption(opt uint32) bool {
	switch opt {
	case optExportName, optAbort, optList, optStartTLS, optInfo, optGo, optStructuredReply,
		optListMetaContext, optSetMetaContext:
		return true
	}
	return false
}

// option handles one option. done reports that the handshake is over:
// with sess == nil the client aborted.
func (n *negotiator) option(ctx context.Context, opt uint32, data []byte) (sess *session, done bool, err error) {
	switch opt {
	case optExportName:
		sess, err := n.exportName(ctx, data)
		return sess, err == nil, err
	case optList:
		return nil, false, n.list(ctx, data)
	case optInfo, optGo:
		sess, err := n.infoGo(ctx, opt, data)
		return sess, sess != nil, err
	case optStructuredReply:
		if len(data) != 0 {
			return nil, false, n.replyError(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
		}
		n.structured = true
		return nil, false, n.reply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return nil, false, n.metaContext(opt, data)
	case optStartTLS:
		return nil, false, n.startTLS(ctx, data)
	}
	return nil, false, n.replyError(opt, repErrUnsup, "option %d is not supported", opt)
}

// exportName handles NBD_OPT_EXPORT_NAME, which cannot report errors: on
// failure the session is terminated.
func (n *negotiator) exportName(ctx context.Context, data []byte) (*session, error) {
	name := string(data)
	if !validString(name) {
		return nil, protoErrorf("NBD_OPT_EXPORT_NAME with an invalid export name")
	}
	vol, err := n.c.srv.Backend.Open(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME %q refused: %w", name, err)
	}
	sess := n.newSession(name, vol)
	var b [8 + 2 + 124]byte
	binary.BigEndian.PutUint64(b[0:], sess.size)
	binary.BigEndian.PutUint16(b[8:], sess.flags)
	out := b[:]
	if n.noZeroes {
		out = b[:10]
	}
	if _, err := n.bw.Write(out); err != nil {
		return sess, fmt.Errorf("replying to NBD_OPT_EXPORT_NAME: %w", err)
	}
	return sess, nil
}

// list handles NBD_OPT_LIST.
func (n *negotiator) list(ctx context.Context, data []byte) error {
	if len(data) != 0 {
		return n.replyError(optList, repErrInvalid, "NBD_OPT_LIST takes no data")
	}
	exports, err := n.c.srv.Backend.List(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return n.replyError(optList, repErrShutdown, "server is shutting down")
		}
		return n.replyError(optList, repErrPolicy, "cannot list exports: %v", err)
	}
	for _, e := range exports {
		if !validString(e.Name) {
			n.c.log.Warn("nbd: not listing export with an invalid name", "name", e.Name)
			continue
		}
		desc := sanitizeMessage(e.Description, maxOptionMessage)
		b := make([]byte, 4, 4+len(e.Name)+len(desc))
		binary.BigEndian.PutUint32(b, uint32(len(e.Name)))
		b = append(b, e.Name...)
		b = append(b, desc...)
		if err := n.reply(optList, repServer, b); err != nil {
			return err
		}
	}
	return n.reply(optList, repAck, nil)
}

// parseInfoRequest decodes the data of NBD_OPT_INFO / NBD_OPT_GO.
func parseInfoRequest(data []byte) (name string, reqs []uint16, ok bool) {
	if len(data) < 6 {
		return "", nil, false
	}
	nameLen := binary.BigEndian.Uint32(data)
	// "length of name (unsigned); MUST be no larger than the option data
	// length - 6"
	if uint64(nameLen) > uint64(len(data)-6) {
		return "", nil, false
	}
	name = string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	count := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*count {
		return "", nil, false
	}
	reqs = make([]uint16, count)
	for i := range reqs {
		reqs[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return name, reqs, true
}

// infoGo handles NBD_OPT_INFO and NBD_OPT_GO. For GO it returns the
// session once NBD_REP_ACK is queued; for INFO the volume is attached just
// long enough to describe it.
func (n *negotiator) infoGo(ctx context.Context, opt uint32, data []byte) (*session, error) {
	name, reqs, ok := parseInfoRequest(data)
	if !ok {
		return nil, n.replyError(opt, repErrInvalid, "malformed NBD_OPT_%s request", optName(opt))
	}
	if !validString(name) {
		return nil, n.replyError(opt, repErrInvalid, "export name is not a valid NBD string")
	}
	vol, err := n.c.srv.Backend.Open(ctx, name)
	if err != nil {
		return nil, n.openError(ctx, opt, name, err)
	}
	sess := n.newSession(name, vol)
	err = n.sendInfo(opt, sess, reqs)
	if err != nil || opt == optInfo {
		if cerr := vol.Close(); cerr != nil {
			n.c.log.Warn("nbd: closing volume after NBD_OPT_INFO", "err", cerr)
		}
		return nil, err
	}
	return sess, nil
}

// openError answers an option whose Backend.Open failed.
func (n *negotiator) openError(ctx context.Context, opt uint32, name string, err error) error {
	msg := err.Error()
	var typ uint32
	switch {
	case ctx.Err() != nil:
		typ, msg = repErrShutdown, "server is shutting down"
	case errors.Is(err, ErrBusy):
		// The export exists but a single-attacher policy refuses it.
		typ = repErrPolicy
		if !strings.Contains(msg, ErrBusy.Error()) {
			msg += ": " + ErrBusy.Error()
		}
	case errors.Is(err, ErrPermission):
		typ = repErrPolicy
	case errors.Is(err, ErrUnknownExport):
		typ = repErrUnknown
	default:
		typ, msg = repErrUnknown, fmt.Sprintf("cannot open export %q: %v", name, err)
	}
	n.c.log.Info("nbd: export refused", "option", optName(opt), "name", name, "err", err)
	return n.replyError(opt, typ, "%s", msg)
}

// newSession computes what we announce for vol.
func (n *negotiator) newSession(name string, vol Volume) *session {
	sess := &session{
		name:       name,
		vol:        vol,
		size:       vol.Size(),
		readOnly:   vol.ReadOnly(),
		structured: n.structured,
	}
	sess.flags = tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim |
		tflagSendWriteZeroes | tflagSendFastZero
	if sess.structured {
		// NBD_FLAG_SEND_DF "MUST leave this flag clear if structured
		// replies have not been negotiated".
		sess.flags |= tflagSendDF
	}
	if sess.readOnly {
		sess.flags |= tflagReadOnly
	}
	if n.structured && n.metaSelected && n.metaExport == name {
		sess.metaContext = metaContextIDAllocation
	}
	sess.minBlock, sess.prefBlock, sess.maxBlock = n.c.srv.blockSizes(vol, n.c)
	return sess
}

// blockSizes returns the block size constraints announced for vol
// ("Block size constraints").
func (s *Server) blockSizes(vol Volume, c *conn) (minimum, preferred, maximum uint32) {
	limit := s.maxPayload()
	minimum, preferred, maximum = 1, 4096, limit
	bs, ok := vol.(BlockSizer)
	if !ok {
		return minimum, preferred, maximum
	}
	m, p, x := bs.BlockSizes()
	valid := m >= 1 && m <= 64<<10 && bits.OnesCount32(m) == 1 &&
		bits.OnesCount32(p) == 1 && p >= max(m, 512) &&
		x >= m && (x%m == 0 || x == 0xffffffff)
	if valid {
		x = min(x, limit)
		x -= x % m
		valid = x >= m && p <= x
	}
	if !valid {
		c.log.Warn("nbd: ignoring invalid block sizes of volume", "min", m, "preferred", p, "max", x)
		return minimum, preferred, maximum
	}
	return m, p, x
}

// sendInfo sends the NBD_REP_INFO replies and the final NBD_REP_ACK.
func (n *negotiator) sendInfo(opt uint32, sess *session, reqs []uint16) error {
	// NBD_INFO_EXPORT is mandatory.
	if err := n.replyStruct(opt, repInfo, protocol.NegotiationReplyInfo{
		Type:              infoExport,
		Size:              sess.size,
		TransmissionFlags: sess.flags,
	}); err != nil {
		return err
	}
	if slices.Contains(reqs, infoName) {
		b := binary.BigEndian.AppendUint16(nil, infoName)
		if err := n.reply(opt, repInfo, append(b, sess.name...)); err != nil {
			return err
		}
	}
	if d, ok := sess.vol.(Describer); ok && slices.Contains(reqs, infoDescription) {
		if desc := sanitizeMessage(d.Description(), maxOptionMessage); desc != "" {
			b := binary.BigEndian.AppendUint16(nil, infoDescription)
			if err := n.reply(opt, repInfo, append(b, desc...)); err != nil {
				return err
			}
		}
	}
	// Block sizes are always sent: clients that did not ask ignore them,
	// and those that did learn the maximum payload.
	if err := n.replyStruct(opt, repInfo, protocol.NegotiationReplyBlockSize{
		Type:               infoBlockSize,
		MinimumBlockSize:   sess.minBlock,
		PreferredBlockSize: sess.prefBlock,
		MaximumBlockSize:   sess.maxBlock,
	}); err != nil {
		return err
	}
	return n.reply(opt, repAck, nil)
}

// parseMetaContextRequest decodes the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT.
func parseMetaContextRequest(data []byte) (name string, queries []string, ok bool) {
	field := func() (string, bool) {
		if len(data) < 4 {
			return "", false
		}
		l := binary.BigEndian.Uint32(data)
		if uint64(l) > uint64(len(data)-4) {
			return "", false
		}
		s := string(data[4 : 4+l])
		data = data[4+l:]
		return s, validString(s)
	}
	if name, ok = field(); !ok {
		return "", nil, false
	}
	if len(data) < 4 {
		return "", nil, false
	}
	count := binary.BigEndian.Uint32(data)
	data = data[4:]
	if uint64(count) > uint64(len(data))/4 { // each query takes ≥ 4 bytes
		return "", nil, false
	}
	for range count {
		q, ok := field()
		if !ok {
			return "", nil, false
		}
		queries = append(queries, q)
	}
	if len(data) != 0 {
		return "", nil, false
	}
	return name, queries, true
}

// metaContext handles NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. We know one context, base:allocation.
func (n *negotiator) metaContext(opt uint32, data []byte) error {
	set := opt == optSetMetaContext
	if set {
		// "replaces all previously-set metadata contexts (including when
		// this command fails)"
		n.metaSelected, n.metaExport = false, ""
		if !n.structured {
			return n.replyError(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY must be negotiated first")
		}
	}
	name, queries, ok := parseMetaContextRequest(data)
	if !ok {
		return n.replyError(opt, repErrInvalid, "malformed NBD_OPT_%s request", optName(opt))
	}
	match := false
	if !set && len(queries) == 0 {
		match = true // "MUST return all the metadata contexts"
	}
	for _, q := range queries {
		// "base:" is a wildcard for LIST and ignored by SET; unknown
		// leaf names and namespaces are ignored.
		if q == metaContextBaseAllocation || (!set && q == "base:") {
			match = true
		}
	}
	if match {
		id := uint32(0) // "SHOULD be set to zero" in LIST replies
		if set {
			id = metaContextIDAllocation
			n.metaSelected, n.metaExport = true, name
		}
		b := binary.BigEndian.AppendUint32(nil, id)
		if err := n.reply(opt, repMetaContext, append(b, metaContextBaseAllocation...)); err != nil {
			return err
		}
	}
	return n.reply(opt, repAck, nil)
}

// reply queues one option reply.
func (n *negotiator) reply(opt, typ uint32, data []byte) error {
	h := protocol.NegotiationReplyHeader{
		ReplyMagic: magicOptionReply,
		ID:         opt,
		Type:       typ,
		Length:     uint32(len(data)),
	}
	if err := binary.Write(n.bw, binary.BigEndian, h); err != nil {
		return fmt.Errorf("writing reply to option %s: %w", optName(opt), err)
	}
	if _, err := n.bw.Write(data); err != nil {
		return fmt.Errorf("writing reply to option %s: %w", optName(opt), err)
	}
	return nil
}

// replyError queues an error reply whose data is a human-readable message.
func (n *negotiator) replyError(opt, typ uint32, format string, args ...any) error {
	msg := sanitizeMessage(fmt.Sprintf(format, args...), maxOptionMessage)
	n.c.log.Debug("nbd: option error", "option", optName(opt), "type", fmt.Sprintf("%#x", typ), "msg", msg)
	return n.reply(opt, typ, []byte(msg))
}

// replyStruct queues an option reply whose data is a fixed-size protocol
// struct in network byte order.
func (n *negotiator) replyStruct(opt, typ uint32, v any) error {
	b, err := binary.Append(nil, binary.BigEndian, v)
	if err != nil {
		return fmt.Errorf("encoding reply to option %s: %w", optName(opt), err)
	}
	return n.reply(opt, typ, b)
}
