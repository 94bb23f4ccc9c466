package net

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	gonet "net"
	"sync"
)

// Client is the admin side of the request/response channel. Calls may be
// issued concurrently; each carries a request id and the responses may
// come back in any order.
type Client struct {
	conn     gonet.Conn
	addr     string
	w        *frameWriter
	maxFrame int
	done     chan struct{} // closed when the connection is gone
	readDone chan struct{} // closed when the reader goroutine has exited
	once     sync.Once

	mu      sync.Mutex
	err     error // why the connection is gone
	nextID  uint64
	pending map[uint64]chan callResult
}

type callResult struct {
	payload []byte
	err     error
}

// Dial connects to a sheep's transport at addr as an admin client. ctx
// bounds the connect and the handshake (each also has the default timeout).
func Dial(ctx context.Context, addr string) (*Client, error) {
	return DialTLS(ctx, addr, nil)
}

// DialTLS is Dial over TLS with cfg (nil: plain TCP). cfg needs the
// cluster CA as RootCAs and a client certificate; ServerName, if empty,
// is the host of addr. A handshake the node refuses, or a plain dial to
// a node that requires TLS, fails with a *TLSError that says why.
func DialTLS(ctx context.Context, addr string, cfg *tls.Config) (*Client, error) {
	d := gonet.Dialer{Timeout: DefaultDialTimeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("sheepdog/net: dial %s: %w", addr, err)
	}
	if cfg != nil {
		if c, err = clientTLS(ctx, c, addr, cfg, DefaultHandshakeTimeout); err != nil {
			return nil, fmt.Errorf("sheepdog/net: %w", err)
		}
	}
	if _, err := dialHandshake(ctx, c, hello{version: ProtocolVersion, role: roleAdmin}, DefaultHandshakeTimeout); err != nil {
		c.Close()
		if cfg != nil {
			err = describeTLS(addr, err)
		}
		var te *TLSError
		if errors.As(err, &te) {
			te.Addr = addr
			return nil, fmt.Errorf("sheepdog/net: %w", err)
		}
		return nil, fmt.Errorf("sheepdog/net: handshake with %s: %w", addr, err)
	}
	cl := &Client{
		conn:     c,
		addr:     addr,
		w:        newFrameWriter(c, DefaultWriteTimeout),
		maxFrame: DefaultMaxFrame,
		done:     make(chan struct{}),
		readDone: make(chan struct{}),
		pending:  make(map[uint64]chan callResult),
	}
	go cl.readLoop(bufio.NewReaderSize(c, bufSize))
	return cl, nil
}

// Call sends a request and waits for its response. A handler error comes
// back as a *RemoteError carrying the handler's error text. If ctx ends
// first, Call returns its error and the late response is discarded.
func (c *Client) Call(ctx context.Context, payload []byte) ([]byte, error) {
	if len(payload) > c.maxFrame {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, len(payload), c.maxFrame)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("sheepdog/net: call: %w", err)
	}
	ch := make(chan callResult, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()

	if err := c.w.write(typeRequest, id, payload); err != nil {
		c.forget(id)
		c.fail(fmt.Errorf("sheepdog/net: connection to %s lost: %w", c.addr, err))
		return nil, c.failure()
	}
	select {
	case r := <-ch:
		return r.payload, r.err
	case <-ctx.Done():
		c.forget(id)
		return nil, fmt.Errorf("sheepdog/net: call: %w", ctx.Err())
	case <-c.done:
		select {
		case r := <-ch: // answered just before the connection went
			return r.payload, r.err
		default:
		}
		return nil, c.failure()
	}
}

// Close closes the connection; pending and later Calls fail with ErrClosed.
func (c *Client) Close() error {
	c.once.Do(func() {
		c.fail(ErrClosed)
		<-c.readDone
	})
	return nil
}

func (c *Client) readLoop(br *bufio.Reader) {
	defer close(c.readDone)
	var hdr [headerSize]byte
	for {
		h, payload, err := readFrame(br, &hdr, c.maxFrame)
		if err == nil && h.typ != typeResponse && h.typ != typeError {
			err = fmt.Errorf("%w: %s frame sent to an admin client", ErrMalformed, h.typ)
		}
		if err != nil {
			c.fail(fmt.Errorf("sheepdog/net: connection to %s lost: %w", c.addr, err))
			return
		}
		c.mu.Lock()
		ch := c.pending[h.id]
		delete(c.pending, h.id)
		c.mu.Unlock()
		switch {
		case ch == nil: // the caller gave up
		case h.typ == typeError:
			ch <- callResult{err: &RemoteError{Msg: string(payload)}}
		default:
			ch <- callResult{payload: payload}
		}
	}
}

func (c *Client) forget(id uint64) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// fail records the first reason the connection is gone and closes it.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
		close(c.done)
	}
	c.mu.Unlock()
	c.conn.Close()
}

func (c *Client) failure() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}
