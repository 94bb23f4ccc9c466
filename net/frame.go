package net

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// ProtocolVersion is the wire protocol version announced in every handshake.
// Both ends must speak the same version; a mismatch is rejected with
// ErrVersion. It covers what the frames carry too: version 3 moved a
// core message's data bytes to its end (core.Message.MarshalSplit).
const ProtocolVersion uint16 = 3

const (
	handshakeMagic uint32 = 0x53444F47 // "SDOG"
	frameMagic     uint32 = 0x53444652 // "SDFR"

	helloSize  = 16   // magic, version, role, reserved, node id
	ackSize    = 18   // magic, version, status, reserved, node id, reason length
	maxReason  = 1024 // longest rejection reason carried in an ack
	headerSize = 24   // magic, type, flags, reserved, length, crc, request id
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// role is what the dialer of a connection wants to do with it.
type role uint8

const (
	rolePeer  role = 1 // one-directional stream of peer messages
	roleAdmin role = 2 // request/response channel of the admin CLI
)

func (r role) String() string {
	switch r {
	case rolePeer:
		return "peer"
	case roleAdmin:
		return "admin"
	}
	return fmt.Sprintf("role(%d)", uint8(r))
}

// Ack status codes.
const (
	statusOK      uint8 = 0
	statusVersion uint8 = 1 // protocol version not supported
	statusRole    uint8 = 2 // role unknown or not served by this node
)

// frameType is the type byte of a frame header.
type frameType uint8

const (
	typeMessage  frameType = 1 // peer message (peer connections)
	typeRequest  frameType = 2 // admin request (client to server)
	typeResponse frameType = 3 // admin response (server to client)
	typeError    frameType = 4 // admin error response; payload is the error text
)

func (t frameType) String() string {
	switch t {
	case typeMessage:
		return "message"
	case typeRequest:
		return "request"
	case typeResponse:
		return "response"
	case typeError:
		return "error"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// hello is the first thing a dialer sends.
type hello struct {
	version uint16
	role    role
	node    uint64
}

func putHello(b []byte, h hello) {
	_ = b[helloSize-1]
	binary.BigEndian.PutUint32(b[0:4], handshakeMagic)
	binary.BigEndian.PutUint16(b[4:6], h.version)
	b[6] = byte(h.role)
	b[7] = 0
	binary.BigEndian.PutUint64(b[8:16], h.node)
}

// parseHello checks the magic and the reserved byte; version and role are
// judged by the caller so that it can answer with a precise rejection.
func parseHello(b []byte) (hello, error) {
	_ = b[helloSize-1]
	if m := binary.BigEndian.Uint32(b[0:4]); m != handshakeMagic {
		return hello{}, fmt.Errorf("%w: hello: bad magic %#08x", ErrMalformed, m)
	}
	if b[7] != 0 {
		return hello{}, fmt.Errorf("%w: hello: reserved byte is %#02x", ErrMalformed, b[7])
	}
	return hello{
		version: binary.BigEndian.Uint16(b[4:6]),
		role:    role(b[6]),
		node:    binary.BigEndian.Uint64(b[8:16]),
	}, nil
}

// ack is the listener's answer to a hello.
type ack struct {
	version uint16
	status  uint8
	node    uint64
	reason  string
}

func appendAck(b []byte, a ack) []byte {
	reason := a.reason
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	b = binary.BigEndian.AppendUint32(b, handshakeMagic)
	b = binary.BigEndian.AppendUint16(b, a.version)
	b = append(b, a.status, 0)
	b = binary.BigEndian.AppendUint64(b, a.node)
	b = binary.BigEndian.AppendUint16(b, uint16(len(reason)))
	return append(b, reason...)
}

func readAck(r io.Reader) (ack, error) {
	var b [ackSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return ack{}, fmt.Errorf("connection closed before the handshake answer: %w", err)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return ack{}, fmt.Errorf("%w: truncated handshake answer", ErrMalformed)
		}
		return ack{}, fmt.Errorf("read handshake answer: %w", err)
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != handshakeMagic {
		return ack{}, fmt.Errorf("%w: handshake answer: bad magic %#08x (not a sheepdog node?)", ErrMalformed, m)
	}
	a := ack{
		version: binary.BigEndian.Uint16(b[4:6]),
		status:  b[6],
		node:    binary.BigEndian.Uint64(b[8:16]),
	}
	n := int(binary.BigEndian.Uint16(b[16:18]))
	if n > maxReason {
		return ack{}, fmt.Errorf("%w: handshake answer: reason of %d bytes exceeds %d", ErrMalformed, n, maxReason)
	}
	if n > 0 {
		reason := make([]byte, n)
		if _, err := io.ReadFull(r, reason); err != nil {
			return ack{}, fmt.Errorf("%w: truncated handshake reason: %w", ErrMalformed, err)
		}
		a.reason = string(reason)
	}
	return a, nil
}

// header is a decoded frame header.
type header struct {
	typ    frameType
	flags  uint8
	length uint32
	sum    uint32 // CRC32C (Castagnoli) of the payload
	id     uint64 // request id; zero on peer messages
}

func putHeader(b []byte, h header) {
	_ = b[headerSize-1]
	binary.BigEndian.PutUint32(b[0:4], frameMagic)
	b[4] = byte(h.typ)
	b[5] = h.flags
	b[6], b[7] = 0, 0
	binary.BigEndian.PutUint32(b[8:12], h.length)
	binary.BigEndian.PutUint32(b[12:16], h.sum)
	binary.BigEndian.PutUint64(b[16:24], h.id)
}

// parseHeader decodes and validates a frame header. Every check that can
// be made before reading the payload is made here, so that a bad length
// never causes an allocation.
func parseHeader(b []byte, maxFrame int) (header, error) {
	_ = b[headerSize-1]
	if m := binary.BigEndian.Uint32(b[0:4]); m != frameMagic {
		return header{}, fmt.Errorf("%w: bad magic %#08x", ErrMalformed, m)
	}
	h := header{
		typ:    frameType(b[4]),
		flags:  b[5],
		length: binary.BigEndian.Uint32(b[8:12]),
		sum:    binary.BigEndian.Uint32(b[12:16]),
		id:     binary.BigEndian.Uint64(b[16:24]),
	}
	if h.typ < typeMessage || h.typ > typeError {
		return header{}, fmt.Errorf("%w: unknown frame type %d", ErrMalformed, uint8(h.typ))
	}
	if h.flags != 0 {
		return header{}, fmt.Errorf("%w: unknown flags %#02x", ErrMalformed, h.flags)
	}
	if b[6] != 0 || b[7] != 0 {
		return header{}, fmt.Errorf("%w: reserved header bytes are not zero", ErrMalformed)
	}
	if uint64(h.length) > uint64(maxFrame) {
		return header{}, fmt.Errorf("%w: %w: length %d exceeds limit %d", ErrMalformed, ErrFrameTooLarge, h.length, maxFrame)
	}
	return h, nil
}

// readFrame reads one frame. hdr is scratch space reused across calls;
// the payload is freshly allocated so that its ownership can be handed
// on. It returns io.EOF if the stream ends cleanly before a frame, an
// error wrapping ErrMalformed if the input is not a valid frame, and any
// other read error wrapped.
func readFrame(r io.Reader, hdr *[headerSize]byte, maxFrame int) (header, []byte, error) {
	if n, err := io.ReadFull(r, hdr[:]); err != nil {
		switch {
		case errors.Is(err, io.EOF):
			return header{}, nil, io.EOF
		case errors.Is(err, io.ErrUnexpectedEOF):
			return header{}, nil, fmt.Errorf("%w: truncated header (%d of %d bytes)", ErrMalformed, n, headerSize)
		}
		return header{}, nil, fmt.Errorf("read frame header: %w", err)
	}
	h, err := parseHeader(hdr[:], maxFrame)
	if err != nil {
		return header{}, nil, err
	}
	payload, n, err := readPayload(r, int(h.length))
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return header{}, nil, fmt.Errorf("%w: truncated %s frame (%d of %d payload bytes)", ErrMalformed, h.typ, n, h.length)
		}
		return header{}, nil, fmt.Errorf("read frame payload: %w", err)
	}
	if sum := crc32.Checksum(payload, castagnoli); sum != h.sum {
		return header{}, nil, fmt.Errorf("%w: bad CRC32C on %s frame of %d bytes: got %#08x, header says %#08x", ErrMalformed, h.typ, h.length, sum, h.sum)
	}
	return h, payload, nil
}

// payloadStep is the largest payload read into a buffer of its full
// length at once; a larger one grows as its bytes arrive.
const payloadStep = 8 << 20

// readPayload reads an n-byte payload and returns it with the number of
// bytes read. A header costs 24 bytes to send, so a payload beyond
// payloadStep is not allocated before its bytes come: otherwise a peer
// could make a node allocate MaxFrame per connection with 24 bytes each.
func readPayload(r io.Reader, n int) ([]byte, int, error) {
	p := make([]byte, min(n, payloadStep))
	k, err := io.ReadFull(r, p)
	for err == nil && len(p) < n {
		p = append(p, make([]byte, min(n-len(p), len(p)))...) // doubles
		var m int
		m, err = io.ReadFull(r, p[k:])
		k += m
	}
	return p, k, err
}

// writeFrame encodes one frame into w, using hdr as scratch space.
func writeFrame(w *bufio.Writer, hdr *[headerSize]byte, typ frameType, id uint64, payload []byte) error {
	return writeSplitFrame(w, hdr, typ, id, split{head: payload})
}

// split is an outgoing frame's payload in two parts, sent one after the
// other: head, then data, which a sender passes uncopied (a write's data).
type split struct{ head, data []byte }

func (f split) len() int { return len(f.head) + len(f.data) }

// header is the header of a frame of type typ carrying f.
func (f split) header(typ frameType, id uint64) header {
	sum := crc32.Update(crc32.Checksum(f.head, castagnoli), castagnoli, f.data)
	return header{typ: typ, length: uint32(f.len()), sum: sum, id: id}
}

// writeSplitFrame encodes one frame whose payload is f into w, using hdr
// as scratch space. Parts larger than w's buffer go to the connection
// uncopied.
func writeSplitFrame(w *bufio.Writer, hdr *[headerSize]byte, typ frameType, id uint64, f split) error {
	putHeader(hdr[:], f.header(typ, id))
	for _, b := range [][]byte{hdr[:], f.head, f.data} {
		if _, err := w.Write(b); err != nil {
			return err
		}
	}
	return nil
}
