package cork

import (
	"net"
	"sync"
)

// Limit is the most a Conn buffers before it writes.
const Limit = 256 << 10

// Conn is a net.Conn whose writes can be held back and written together.
// Writes from the TLS stack outside Hold and Release (the handshake,
// alerts, key updates) go straight through, after anything held.
type Conn struct {
	net.Conn
	mu    sync.Mutex
	holds int
	buf   []byte
	err   error // a failed write of held bytes, reported by Release
}

// New wraps c.
func New(c net.Conn) *Conn { return &Conn{Conn: c} }

// Write buffers p while a Hold is in force, else writes it.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.holds == 0 {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		return c.Conn.Write(p)
	}
	if len(c.buf)+len(p) > Limit {
		if err := c.flushLocked(); err != nil {
			return 0, err
		}
		if len(p) > Limit {
			return c.Conn.Write(p)
		}
	}
	c.buf = append(c.buf, p...)
	return len(p), nil
}

// Hold starts holding writes back.
func (c *Conn) Hold() {
	c.mu.Lock()
	c.holds++
	c.mu.Unlock()
}

// Release ends a Hold and, when none is left, writes what was held; it
// reports a failure to write held bytes since the Hold.
func (c *Conn) Release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.holds--
	if c.holds > 0 {
		return c.err
	}
	err := c.flushLocked()
	if len(c.buf) == 0 && cap(c.buf) > Limit {
		c.buf = nil
	}
	return err
}

func (c *Conn) flushLocked() error {
	if c.err != nil {
		return c.err
	}
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	if err != nil {
		c.err = err
	}
	return err
}
