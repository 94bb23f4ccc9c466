package nowait

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// pair returns both ends of a loopback TCP connection, the dialled end
// wrapped.
func pair(t *testing.T) (*Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	w, ok := Wrap(c).(*Conn)
	if !ok {
		t.Fatalf("Wrap of a TCP connection is a %T", Wrap(c))
	}
	t.Cleanup(func() { w.Close(); s.Close() })
	return w, s
}

func TestWrap(t *testing.T) {
	c, _ := pair(t)
	if Wrap(c) != net.Conn(c) {
		t.Error("Wrap of a Conn wraps it again")
	}
	if Raw(c) == nil {
		t.Error("Raw of a Conn is nil")
	}
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if Wrap(p1) != p1 {
		t.Error("Wrap of a pipe (no descriptor) is not the pipe itself")
	}
}

// TestConnRoundTrip: what one side writes (Write, Writev with empty and
// more than IOV_MAX buffers) the other reads, in order, through a socket
// small enough that writes wait for the reader; Read returns io.EOF once
// the writer closes.
func TestConnRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name   string
		wrapRd bool // the reading end is the Conn
	}{
		{"Conn writes", false},
		{"Conn reads", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, s := pair(t)
			var w, r net.Conn = c, s
			if tc.wrapRd {
				w, r = s, c
			}
			tcp := w
			if cw, ok := w.(*Conn); ok {
				tcp = cw.Conn
			}
			tcp.(*net.TCPConn).SetWriteBuffer(4 << 10)
			var want bytes.Buffer
			done := make(chan error, 1)
			go func() {
				defer w.Close()
				for i := 0; i < 64; i++ {
					b := bytes.Repeat([]byte{byte(i)}, 1+i*997)
					want.Write(b)
					if _, err := w.Write(b); err != nil {
						done <- err
						return
					}
				}
				if cw, ok := w.(*Conn); ok {
					var iov [][]byte
					for i := 0; i < 1500; i++ {
						iov = append(iov, []byte{}, bytes.Repeat([]byte{byte(i)}, i%7+1))
						want.Write(iov[len(iov)-1])
					}
					if _, err := cw.Writev(iov); err != nil {
						done <- err
						return
					}
				}
				done <- nil
			}()
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatalf("ReadAll: %v", err)
			}
			if err := <-done; err != nil {
				t.Fatalf("write: %v", err)
			}
			if !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("read %d bytes that differ from the %d written", len(got), want.Len())
			}
		})
	}
}

// TestConnDeadlinesAndClose: reads and writes honour the connection's
// deadlines and report a closed connection as the net package does.
func TestConnDeadlinesAndClose(t *testing.T) {
	c, s := pair(t)
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Read past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	c.SetReadDeadline(time.Time{})

	// Fill the socket: the peer does not read.
	c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
	big := make([]byte, 1<<20)
	var err error
	for i := 0; i < 256 && err == nil; i++ {
		_, err = c.Write(big)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Write into a full socket past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}

	s.Close()
	c.SetDeadline(time.Time{})
	buf := make([]byte, 1<<20)
	for err = nil; err == nil; {
		_, err = c.Read(buf)
	}
	var ne net.Error
	if !errors.Is(err, io.EOF) && !errors.As(err, &ne) {
		t.Errorf("Read after the peer closed: %v (%T)", err, err)
	}
	c.Close()
	if _, err := c.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read on a closed Conn: %v, want net.ErrClosed", err)
	}
	if _, err := c.Write(buf); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write on a closed Conn: %v, want net.ErrClosed", err)
	}
}

// TestWritevPartial: a raw writev into a socket with little room takes a
// prefix and reports exactly its length.
func TestWritevPartial(t *testing.T) {
	c, s := pair(t)
	var sent []byte
	iov := [][]byte{bytes.Repeat([]byte("a"), 3<<20), bytes.Repeat([]byte("b"), 3<<20)}
	n, _ := Writev(c.rc, iov)
	if n <= 0 || n >= 6<<20 {
		t.Fatalf("Writev of 6 MiB into a socket nobody reads took %d bytes", n)
	}
	for _, b := range iov {
		k := min(n-len(sent), len(b))
		sent = append(sent, b[:k]...)
	}
	c.Close()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(len(sent), len(got)); diff != "" || !bytes.Equal(got, sent) {
		t.Fatalf("peer read %d bytes, Writev reported %d", len(got), len(sent))
	}
}
