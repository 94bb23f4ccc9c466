package nbd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// refusals records the reasons a Server reported to Refused.
type refusals struct {
	mu      sync.Mutex
	reasons []string
}

func (r *refusals) add(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reasons = append(r.reasons, reason)
}

// waitFor waits until the reasons recorded are want (the server reports a
// refusal once the connection is over, possibly after the client saw it).
func (r *refusals) waitFor(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for {
		r.mu.Lock()
		got := append([]string(nil), r.reasons...)
		r.mu.Unlock()
		diff := cmp.Diff(want, got)
		if diff == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("refusal reasons (-want +got):\n%s", diff)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// tlsServer serves "disk" (1 MiB) over TLS with a certificate from ca,
// requiring client certificates from ca.
func tlsServer(t *testing.T, ca *testCA, srv *Server) (string, *MemBackend, *refusals) {
	t.Helper()
	mb := NewMemBackend()
	mb.Add("disk", 1<<20).SetDescription("the TLS disk")
	mb.AttachWait = 30 * time.Second // tools reconnect at once
	srv.Backend = mb
	srv.TLSConfig = ca.serverConfig(t)
	r := &refusals{}
	srv.Refused = r.add
	return startServer(t, srv), mb, r
}

// startTLS sends NBD_OPT_STARTTLS and runs the TLS handshake with cfg;
// the client then talks over TLS.
func (c *testClient) startTLS(cfg *tls.Config) error {
	c.tb.Helper()
	if _, err := c.option(optStartTLS, nil); err != nil {
		return err
	}
	tc := tls.Client(c.nc, cfg)
	if err := tc.Handshake(); err != nil {
		return err
	}
	c.nc = tc
	c.br = bufio.NewReaderSize(tc, 256<<10)
	return nil
}

// TestTLSStartTLS: a client with a certificate from the CA upgrades with
// NBD_OPT_STARTTLS, negotiates an export over TLS and reads and writes
// it; the server sees its certificate.
func TestTLSStartTLS(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	addr, mb, ref := tlsServer(t, ca, &Server{})
	for _, tc := range []struct {
		name       string
		structured bool
	}{{"simple replies", false}, {"structured replies", true}} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr)
			c.clientFlags(clientFlagFixedNewstyle | clientFlagNoZeroes)
			if err := c.startTLS(ca.clientConfig(t, "alice", ca)); err != nil {
				t.Fatalf("STARTTLS: %v", err)
			}
			st := c.nc.(*tls.Conn).ConnectionState()
			if st.Version != tls.VersionTLS13 {
				t.Errorf("TLS version %s, want TLS 1.3", tls.VersionName(st.Version))
			}
			if got := st.PeerCertificates[0].Subject.CommonName; got != "nbd-server" {
				t.Errorf("server certificate of %q", got)
			}
			// A second STARTTLS is invalid, and the session goes on.
			_, err := c.option(optStartTLS, nil)
			wantOptError(t, err, repErrInvalid, "already")
			if err := c.negotiate("disk", tc.structured, tc.structured); err != nil {
				t.Fatalf("negotiating over TLS: %v", err)
			}
			if got := string(c.infos[infoDescription]); got != "the TLS disk" {
				t.Errorf("description %q", got)
			}
			payload := bytes.Repeat([]byte("secret"), 20000) // larger than a TLS record
			c.writeAt(payload, 4096)
			if got := c.read(4096, uint32(len(payload))); !bytes.Equal(got, payload) {
				t.Fatalf("read back %d bytes that differ", len(got))
			}
			// Pipelined requests: replies batch in TLS records.
			var hs []uint64
			for i := range 32 {
				hs = append(hs, c.send(cmdRead, 0, uint64(i)*512, 512, nil))
			}
			for range hs {
				if r, err := c.recv(); err != nil || r.errno != 0 {
					t.Fatalf("pipelined read: %v, errno %d", err, r.errno)
				}
			}
			c.disconnect()
		})
	}
	vol, _ := mb.Open(t.Context(), "disk")
	p := make([]byte, 6)
	vol.ReadAt(t.Context(), p, 4096)
	vol.Close()
	if string(p) != "secret" {
		t.Errorf("volume holds %q", p)
	}
	ref.waitFor(t) // nothing refused
}

// TestTLSRequired: before STARTTLS a TLS server refuses every option but
// STARTTLS and ABORT with NBD_REP_ERR_TLS_REQD, and the same connection
// can still upgrade afterwards.
func TestTLSRequired(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	addr, _, ref := tlsServer(t, ca, &Server{})
	c := dial(t, addr)
	c.clientFlags(clientFlagFixedNewstyle | clientFlagNoZeroes)
	for _, tc := range []struct {
		name string
		opt  uint32
		data []byte
	}{
		{"LIST", optList, nil},
		{"INFO", optInfo, infoRequest("disk", infoBlockSize)},
		{"GO", optGo, infoRequest("disk")},
		{"GO of an unknown export", optGo, infoRequest("nope")},
		{"STRUCTURED_REPLY", optStructuredReply, nil},
		{"LIST_META_CONTEXT", optListMetaContext, metaRequest("disk")},
		{"SET_META_CONTEXT", optSetMetaContext, metaRequest("disk", metaContextBaseAllocation)},
		{"unknown option", 99, []byte("data")},
		{"oversized option", optInfo, make([]byte, maxOptionLength+1)},
	} {
		_, err := c.option(tc.opt, tc.data)
		var oe *optError
		if !errors.As(err, &oe) || oe.typ != repErrTLSReqd || !strings.Contains(oe.msg, "TLS required") {
			t.Errorf("%s before STARTTLS: %v, want NBD_REP_ERR_TLS_REQD", tc.name, err)
		}
	}
	if err := c.startTLS(ca.clientConfig(t, "alice", ca)); err != nil {
		t.Fatalf("STARTTLS after refused options: %v", err)
	}
	if err := c.negotiate("disk", true, false); err != nil {
		t.Fatalf("negotiating over TLS: %v", err)
	}
	c.read(0, 512)
	c.disconnect()
	ref.waitFor(t) // the connection got TLS in the end: not a refusal
}

// TestTLSRefusals: what ends a connection to a TLS server before TLS, and
// the reason reported for it.
func TestTLSRefusals(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	other := newTestCA(t, "another CA")
	addr, _, ref := tlsServer(t, ca, &Server{})
	tests := []struct {
		name   string
		run    func(t *testing.T, c *testClient)
		reason string // "" for none
	}{
		{"EXPORT_NAME before STARTTLS", func(t *testing.T, c *testClient) {
			c.sendOption(optExportName, []byte("disk"))
			c.expectClosed()
		}, "tls-required"},
		{"options refused then ABORT", func(t *testing.T, c *testClient) {
			_, err := c.option(optGo, infoRequest("disk"))
			wantOptError(t, err, repErrTLSReqd, "TLS required")
			if _, err := c.option(optAbort, nil); err != nil {
				t.Fatalf("ABORT: %v", err)
			}
			c.expectClosed()
		}, "tls-required"},
		{"ABORT at once", func(t *testing.T, c *testClient) {
			if _, err := c.option(optAbort, nil); err != nil {
				t.Fatalf("ABORT: %v", err)
			}
			c.expectClosed()
		}, ""},
		{"STARTTLS with data", func(t *testing.T, c *testClient) {
			_, err := c.option(optStartTLS, []byte{1})
			wantOptError(t, err, repErrInvalid, "no data")
			if _, err := c.option(optAbort, nil); err != nil {
				t.Fatalf("ABORT: %v", err)
			}
			c.expectClosed()
		}, ""},
		{"client certificate from another CA", func(t *testing.T, c *testClient) {
			cfg := other.clientConfig(t, "mallory", ca)
			// Send it even though the server asks for certificates of
			// its own CA (Go's client would send none).
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return &cfg.Certificates[0], nil
			}
			err := c.startTLS(cfg)
			if err == nil {
				// TLS 1.3: the client learns of the refusal on its
				// first read.
				_, err = c.option(optList, nil)
			}
			if err == nil {
				t.Fatal("a client certificate from another CA was accepted")
			}
			t.Logf("client saw: %v", err)
		}, "tls-handshake"},
		{"no client certificate", func(t *testing.T, c *testClient) {
			err := c.startTLS(ca.clientConfig(t, "", ca))
			if err == nil {
				_, err = c.option(optList, nil)
			}
			if err == nil {
				t.Fatal("a client without a certificate was accepted")
			}
		}, "tls-handshake"},
		{"plain text after STARTTLS", func(t *testing.T, c *testClient) {
			// The option and a smuggled option in one write, before
			// reading the ACK.
			var b bytes.Buffer
			b.Write(option(optStartTLS, nil))
			b.Write(option(optGo, infoRequest("disk")))
			c.write(b.Bytes())
			r, err := c.readOptReply()
			if err != nil || r.typ != repAck {
				t.Fatalf("STARTTLS reply %+v, %v", r, err)
			}
			c.expectClosed()
		}, "protocol"},
		{"handshake with garbage", func(t *testing.T, c *testClient) {
			if _, err := c.option(optStartTLS, nil); err != nil {
				t.Fatal(err)
			}
			c.write(bytes.Repeat([]byte{0x16, 3, 1, 0, 5, 'x'}, 10))
			c.expectClosed()
		}, "tls-handshake"},
	}
	var want []string
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dial(t, addr)
			c.clientFlags(clientFlagFixedNewstyle | clientFlagNoZeroes)
			tt.run(t, c)
		})
		if tt.reason != "" {
			want = append(want, tt.reason)
		}
		ref.waitFor(t, want...)
	}
	// The server still serves clients of its CA.
	c := dial(t, addr)
	c.clientFlags(clientFlagFixedNewstyle)
	if err := c.startTLS(ca.clientConfig(t, "alice", ca)); err != nil {
		t.Fatal(err)
	}
	if err := c.negotiate("disk", false, false); err != nil {
		t.Fatal(err)
	}
	c.read(0, 4096)
	c.disconnect()
}

// TestTLSHandshakeTimeout: the handshake deadline covers the TLS
// handshake: a client that sends STARTTLS and then nothing, or starts the
// TLS handshake and stalls, is cut off.
func TestTLSHandshakeTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	ca := newTestCA(t, "cluster CA")
	addr, _, ref := tlsServer(t, ca, &Server{HandshakeTimeout: timeout})
	for _, tc := range []struct {
		name  string
		after []byte // sent after the ACK
	}{
		{"silent after STARTTLS", nil},
		{"half a ClientHello", []byte{0x16, 3, 1, 0x02, 0x00, 1, 0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c := dial(t, addr)
			c.clientFlags(clientFlagFixedNewstyle)
			if _, err := c.option(optStartTLS, nil); err != nil {
				t.Fatal(err)
			}
			if tc.after != nil {
				c.write(tc.after)
			}
			c.expectClosed()
			if d := time.Since(start); d < timeout {
				t.Errorf("closed after %v, before the handshake timeout", d)
			}
		})
	}
	ref.waitFor(t, "tls-handshake", "tls-handshake")
}

// TestStartTLSWithoutTLS: a server without a TLSConfig answers
// NBD_OPT_STARTTLS with NBD_REP_ERR_POLICY (NOTLS mode) and goes on in
// plain text; it never answers NBD_REP_ERR_TLS_REQD.
func TestStartTLSWithoutTLS(t *testing.T) {
	addr, _ := newHandshakeServer(t)
	c := dial(t, addr)
	c.clientFlags(clientFlagFixedNewstyle | clientFlagNoZeroes)
	_, err := c.option(optStartTLS, nil)
	wantOptError(t, err, repErrPolicy, "not configured")
	if err := c.negotiate("disk", true, true); err != nil {
		t.Fatal(err)
	}
	c.read(0, 512)
	c.disconnect()
}

// TestTLSLargeTransfers moves data through TLS in both directions with
// many requests in flight, as a VM does.
func TestTLSLargeTransfers(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	addr, _, _ := tlsServer(t, ca, &Server{MaxInFlight: 8})
	c := dial(t, addr)
	c.clientFlags(clientFlagFixedNewstyle | clientFlagNoZeroes)
	if err := c.startTLS(ca.clientConfig(t, "vm", ca)); err != nil {
		t.Fatal(err)
	}
	if err := c.negotiate("disk", true, false); err != nil {
		t.Fatal(err)
	}
	img := randomImage(7, 1<<20)
	const chunk = 64 << 10
	var wg sync.WaitGroup
	wg.Go(func() {
		for off := 0; off < len(img); off += chunk {
			c.send(cmdWrite, 0, uint64(off), chunk, img[off:off+chunk])
		}
	})
	for range len(img) / chunk {
		if r, err := c.recv(); err != nil || r.errno != 0 {
			t.Fatalf("write: %v, errno %d", err, r.errno)
		}
	}
	wg.Wait()
	got := c.read(0, 1<<20)
	equalBytes(t, "read over TLS", img, got)
	c.disconnect()
	if _, err := io.Copy(io.Discard, c.br); err != nil {
		t.Errorf("after disconnect: %v", err)
	}
}
