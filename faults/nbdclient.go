package faults

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// NBD wire constants (the protocol's doc/proto.md).
const (
	nbdOptMagic      = 0x49484156454F5054 // "IHAVEOPT"
	nbdOptReplyMagic = 0x3e889045565a9
	nbdOptGo         = 7
	nbdRepAck        = 1
	nbdRepInfo       = 3
	nbdRepErrBit     = 1 << 31
	nbdRequestMagic  = 0x25609513
	nbdReplyMagic    = 0x67446698
	nbdCmdRead       = 0
	nbdCmdWrite      = 1
	nbdCmdDisc       = 2
	nbdCmdFlush      = 3
	nbdFlagFUA       = 1 << 0
)

// errConnDead is returned for requests on a connection that broke: their
// outcome is unknown.
var errConnDead = errors.New("nbd connection lost")

// RefusedError is an export the server refused during the handshake (for
// example "attached elsewhere").
type RefusedError struct{ Msg string }

func (e *RefusedError) Error() string { return "nbd export refused: " + e.Msg }

// nbdConn is a small NBD client: fixed newstyle handshake with
// NBD_OPT_GO, simple replies, any number of requests in flight (replies
// are matched by handle).
type nbdConn struct {
	c    net.Conn
	size uint64

	wmu sync.Mutex // request writes

	mu      sync.Mutex
	pending map[uint64]*nbdCall
	next    uint64
	err     error // set once the connection broke
	dead    chan struct{}
}

type nbdCall struct {
	readLen int
	done    chan nbdResult
}

type nbdResult struct {
	errno uint32
	data  []byte
	err   error
}

// nbdHandshake negotiates export on c and starts the reply reader.
func nbdHandshake(c net.Conn, export string) (*nbdConn, error) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	hdr := make([]byte, 18)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return nil, fmt.Errorf("nbd greeting: %w", err)
	}
	if string(hdr[:8]) != "NBDMAGIC" || binary.BigEndian.Uint64(hdr[8:16]) != nbdOptMagic {
		return nil, fmt.Errorf("nbd greeting: bad magic %q", hdr)
	}
	msg := binary.BigEndian.AppendUint32(nil, 3) // fixed newstyle, no zeroes
	msg = binary.BigEndian.AppendUint64(msg, nbdOptMagic)
	msg = binary.BigEndian.AppendUint32(msg, nbdOptGo)
	msg = binary.BigEndian.AppendUint32(msg, uint32(4+len(export)+2))
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(export)))
	msg = append(msg, export...)
	msg = binary.BigEndian.AppendUint16(msg, 0) // no info requests
	if _, err := c.Write(msg); err != nil {
		return nil, fmt.Errorf("nbd option: %w", err)
	}
	n := &nbdConn{c: c, pending: map[uint64]*nbdCall{}, dead: make(chan struct{})}
	for {
		rh := make([]byte, 20)
		if _, err := io.ReadFull(c, rh); err != nil {
			return nil, fmt.Errorf("nbd option reply: %w", err)
		}
		if binary.BigEndian.Uint64(rh) != nbdOptReplyMagic {
			return nil, fmt.Errorf("nbd option reply: bad magic %x", rh[:8])
		}
		typ, length := binary.BigEndian.Uint32(rh[12:]), binary.BigEndian.Uint32(rh[16:])
		if length > 1<<16 {
			return nil, fmt.Errorf("nbd option reply: %d bytes", length)
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(c, data); err != nil {
			return nil, fmt.Errorf("nbd option reply: %w", err)
		}
		switch {
		case typ&nbdRepErrBit != 0:
			return nil, &RefusedError{Msg: string(data)}
		case typ == nbdRepInfo && len(data) >= 12 && binary.BigEndian.Uint16(data) == 0:
			n.size = binary.BigEndian.Uint64(data[2:])
		case typ == nbdRepAck:
			_ = c.SetDeadline(time.Time{})
			go n.reader()
			return n, nil
		}
	}
}

// reader matches replies to requests until the connection breaks.
func (n *nbdConn) reader() {
	h := make([]byte, 16)
	var err error
	for {
		if _, err = io.ReadFull(n.c, h); err != nil {
			break
		}
		if binary.BigEndian.Uint32(h) != nbdReplyMagic {
			err = fmt.Errorf("bad reply magic %x", h[:4])
			break
		}
		errno, handle := binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
		n.mu.Lock()
		call := n.pending[handle]
		delete(n.pending, handle)
		n.mu.Unlock()
		if call == nil {
			err = fmt.Errorf("reply to unknown handle %d", handle)
			break
		}
		var data []byte
		if errno == 0 && call.readLen > 0 {
			data = make([]byte, call.readLen)
			if _, err = io.ReadFull(n.c, data); err != nil {
				call.done <- nbdResult{err: fmt.Errorf("%w: %w", errConnDead, err)}
				break
			}
		}
		call.done <- nbdResult{errno: errno, data: data}
	}
	n.fail(err)
}

// fail ends the connection: every request still waiting gets errConnDead.
func (n *nbdConn) fail(err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.err != nil {
		return
	}
	n.err = fmt.Errorf("%w: %w", errConnDead, err)
	for h, call := range n.pending {
		call.done <- nbdResult{err: n.err}
		delete(n.pending, h)
	}
	close(n.dead)
	_ = n.c.Close()
}

// Close closes the connection.
func (n *nbdConn) Close() { n.fail(errors.New("closed by the client")) }

// do sends one request and waits for its reply or ctx. An error (not an
// errno) means the outcome is unknown; the connection is then closed.
func (n *nbdConn) do(ctx context.Context, typ, flags uint16, off uint64, length uint32, data []byte) (uint32, []byte, error) {
	call := &nbdCall{done: make(chan nbdResult, 1)}
	if typ == nbdCmdRead {
		call.readLen = int(length)
	}
	n.mu.Lock()
	if n.err != nil {
		err := n.err
		n.mu.Unlock()
		return 0, nil, err
	}
	n.next++
	handle := n.next
	n.pending[handle] = call
	n.mu.Unlock()

	b := make([]byte, 0, 28+len(data))
	b = binary.BigEndian.AppendUint32(b, nbdRequestMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	b = append(b, data...)
	n.wmu.Lock()
	_ = n.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := n.c.Write(b)
	n.wmu.Unlock()
	if err != nil {
		n.fail(err)
	}
	select {
	case r := <-call.done:
		return r.errno, r.data, r.err
	case <-ctx.Done():
		n.fail(fmt.Errorf("request timed out: %w", ctx.Err()))
		return 0, nil, fmt.Errorf("%w: %w", errConnDead, ctx.Err())
	}
}

// disconnect sends NBD_CMD_DISC and closes the connection.
func (n *nbdConn) disconnect() {
	b := binary.BigEndian.AppendUint32(nil, nbdRequestMagic)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, nbdCmdDisc)
	b = append(b, make([]byte, 20)...)
	n.wmu.Lock()
	_ = n.c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = n.c.Write(b)
	n.wmu.Unlock()
	n.Close()
}
