package cork

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"testing"
	"time"
)

// countConn records the writes that reach the connection.
type countConn struct {
	net.Conn
	writes [][]byte
	err    error
}

func (c *countConn) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func TestHoldBatches(t *testing.T) {
	tests := []struct {
		name   string
		hold   bool
		sizes  []int
		writes int
	}{
		{"no hold: each write goes through", false, []int{10, 20, 30}, 3},
		{"held: one write", true, []int{10, 20, 30}, 1},
		{"held beyond the limit: written as it fills", true, []int{Limit / 2, Limit / 2, Limit / 2}, 2},
		{"held, one write larger than the limit", true, []int{10, 2 * Limit}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc := &countConn{}
			c := New(cc)
			if tt.hold {
				c.Hold()
			}
			var want []byte
			for i, n := range tt.sizes {
				p := bytes.Repeat([]byte{byte(i + 1)}, n)
				want = append(want, p...)
				if k, err := c.Write(p); err != nil || k != n {
					t.Fatalf("Write(%d) = %d, %v", n, k, err)
				}
			}
			if tt.hold {
				if err := c.Release(); err != nil {
					t.Fatal(err)
				}
			}
			if len(cc.writes) != tt.writes {
				t.Errorf("%d writes reached the connection, want %d", len(cc.writes), tt.writes)
			}
			if got := bytes.Join(cc.writes, nil); !bytes.Equal(got, want) {
				t.Errorf("the connection got %d bytes, not what was written (%d)", len(got), len(want))
			}
		})
	}
}

func TestReleaseReportsFailure(t *testing.T) {
	cc := &countConn{}
	c := New(cc)
	c.Hold()
	if _, err := c.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("broken pipe")
	cc.err = boom
	if err := c.Release(); !errors.Is(err, boom) {
		t.Fatalf("Release = %v, want %v", err, boom)
	}
	if _, err := c.Write([]byte("later")); !errors.Is(err, boom) {
		t.Fatalf("a write after the failure = %v, want %v", err, boom)
	}
}

// TestTLSRecordsInOneWrite: a 1 MiB write through a tls.Conn over a Conn,
// held, reaches the socket in about 1 MiB / Limit writes instead of one
// per 16 KiB record, and arrives intact.
func TestTLSRecordsInOneWrite(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"x"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	a, b := net.Pipe()
	counted := &countingPipe{Conn: a}
	ck := New(counted)
	srv := tls.Server(ck, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	cli := tls.Client(b, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	payload := bytes.Repeat([]byte("0123456789abcdef"), (1<<20)/16)
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, len(payload))
		if _, err := io.ReadFull(cli, buf); err != nil {
			t.Error(err)
		}
		got <- buf
	}()
	if err := srv.Handshake(); err != nil {
		t.Fatal(err)
	}
	before := counted.n
	ck.Hold()
	if _, err := srv.Write(payload); err != nil {
		t.Fatal(err)
	}
	if err := ck.Release(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(<-got, payload) {
		t.Fatal("the client read other bytes than were written")
	}
	if w := counted.n - before; w > len(payload)/Limit+2 {
		t.Errorf("1 MiB over TLS took %d writes to the socket, want at most %d", w, len(payload)/Limit+2)
	}
}

type countingPipe struct {
	net.Conn
	n int
}

func (c *countingPipe) Write(p []byte) (int, error) {
	c.n++
	return c.Conn.Write(p)
}
