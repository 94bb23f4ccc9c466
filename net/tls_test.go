package net

import (
	"context"
	"crypto/tls"
	"errors"
	gonet "net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sheepdog-go/sheepdog/certs"
)

// tlsDirs makes a cluster CA with nodes n1 and n2 and a client "admin",
// and a second CA with a node "n1" and a client "admin"; it returns the
// directories by name ("n1", "rogue/n1", ...).
func tlsDirs(t testing.TB) map[string]string {
	t.Helper()
	dirs := map[string]string{}
	for _, cluster := range []string{"", "rogue/"} {
		dir := t.TempDir()
		ca, err := certs.InitCA(dir, certs.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"n1", "n2"} {
			d, err := ca.IssueNode(dir, n, []string{"127.0.0.1"}, certs.Options{})
			if err != nil {
				t.Fatal(err)
			}
			dirs[cluster+n] = d
		}
		d, err := ca.IssueClient(dir, "admin", certs.Options{})
		if err != nil {
			t.Fatal(err)
		}
		dirs[cluster+"admin"] = d
	}
	return dirs
}

func nodeTLS(t testing.TB, dir string) *TLS {
	t.Helper()
	s, err := certs.ServerConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, err := certs.ClientConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &TLS{Server: s, Client: c}
}

func clientTLSConfig(t testing.TB, dir string) *tls.Config {
	t.Helper()
	c, err := certs.ClientConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// refused is Stats.TLSRefused with only the given reason counted.
func refused(reason string, n uint64) map[string]uint64 {
	m := map[string]uint64{}
	for _, r := range TLSRefusalReasons {
		m[r] = 0
	}
	if reason != "" {
		m[reason] = n
	}
	return m
}

func TestTLSPeersAndAdmin(t *testing.T) {
	checkGoroutines(t)
	dirs := tlsDirs(t)
	var inA, inB inbox
	a := newTransport(t, Config{NodeID: 1, OnMessage: inA.on, TLS: nodeTLS(t, dirs["n1"])})
	b := newTransport(t, Config{NodeID: 2, OnMessage: inB.on, OnRequest: echo, TLS: nodeTLS(t, dirs["n2"])})

	const lanes, perLane = 3, 100
	var wantAB, wantBA map[uint64][]digest
	var wg sync.WaitGroup
	wg.Go(func() { wantAB = sendStream(t, a, 2, b.Addr(), 1, lanes, perLane) })
	wg.Go(func() { wantBA = sendStream(t, b, 1, a.Addr(), 2, lanes, perLane) })
	wg.Wait()
	if diff := cmp.Diff(wantAB, byLane(inB.waitN(t, lanes*perLane), 1)); diff != "" {
		t.Errorf("A→B over TLS (-sent +received):\n%s", diff)
	}
	if diff := cmp.Diff(wantBA, byLane(inA.waitN(t, lanes*perLane), 2)); diff != "" {
		t.Errorf("B→A over TLS (-sent +received):\n%s", diff)
	}
	// A batch over TLS goes through the writer (no direct writes).
	batch := a.NewBatch()
	for i := range 10 {
		if err := batch.Send(2, b.Addr(), 0, tagged(9, uint64(i), 100, nil)); err != nil {
			t.Fatal(err)
		}
	}
	batch.Flush()
	inB.waitN(t, lanes*perLane+10)
	if s := a.Stats(); s.FramesDirect != 0 || s.FramesDropped != 0 {
		t.Errorf("A stats = %+v", s)
	}

	// An admin client with a certificate of the cluster CA.
	c, err := DialTLS(context.Background(), b.Addr(), clientTLSConfig(t, dirs["admin"]))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := c.Call(context.Background(), []byte("over tls"))
	if err != nil || string(got) != "over tls" {
		t.Fatalf("Call = %q, %v", got, err)
	}
	if diff := cmp.Diff(refused("", 0), b.Stats().TLSRefused); diff != "" {
		t.Errorf("refusals (-want +got):\n%s", diff)
	}
}

func TestTLSRefusals(t *testing.T) {
	checkGoroutines(t)
	dirs := tlsDirs(t)
	noCert := clientTLSConfig(t, dirs["admin"]).Clone()
	noCert.GetClientCertificate = nil
	// A client of another CA that trusts our node: the node must refuse it.
	rogue := clientTLSConfig(t, dirs["rogue/admin"]).Clone()
	rogue.RootCAs = clientTLSConfig(t, dirs["admin"]).RootCAs
	old := clientTLSConfig(t, dirs["admin"]).Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12

	for _, tc := range []struct {
		name    string
		client  *tls.Config // nil: plain TCP
		reason  string      // counted by the node ("" for none)
		dialErr string      // in the dialer's error
		is      error       // the dialer's error is this (nil: not checked)
	}{
		{"no certificate", noCert, RefusedNoCert, "the node requires a client certificate from the cluster CA; pass --tls-dir", nil},
		{"another CA's client", rogue, RefusedUnknownCA, "not signed by the cluster CA", nil},
		{"TLS 1.2", old, RefusedBadVersion, "TLS", nil},
		{"plain client", nil, RefusedNotTLS, "requires TLS with a client certificate from the cluster CA; pass --tls-dir", ErrTLSRequired},
		{"node of another CA", clientTLSConfig(t, dirs["rogue/n1"]), RefusedOther, "is of another cluster", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logger, logs := testLogger()
			b := newTransport(t, Config{NodeID: 2, OnRequest: echo, Logger: logger, TLS: nodeTLS(t, dirs["n2"])})
			c, err := DialTLS(context.Background(), b.Addr(), tc.client)
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			var te *TLSError
			if !errors.As(err, &te) || !strings.Contains(err.Error(), tc.dialErr) {
				t.Errorf("dial error %v, want a *TLSError containing %q", err, tc.dialErr)
			}
			t.Log(err)
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("dial error %v is not %v", err, tc.is)
			}
			waitFor(t, "the refusal to be counted", func() bool { return b.Stats().TLSRefused[tc.reason] == 1 })
			if diff := cmp.Diff(refused(tc.reason, 1), b.Stats().TLSRefused); diff != "" {
				t.Errorf("refusals (-want +got):\n%s", diff)
			}
			waitFor(t, "the refusal to be logged", func() bool { return logs.count("TLS handshake refused", "reason="+tc.reason) == 1 })
			if b.Stats().Requests != 0 {
				t.Error("a refused client's request was served")
			}
		})
	}

	// A peer of another CA cannot send a message: its dial fails.
	t.Run("peer of another CA", func(t *testing.T) {
		var in inbox
		b := newTransport(t, Config{NodeID: 2, OnMessage: in.on, TLS: nodeTLS(t, dirs["n2"])})
		a := newTransport(t, Config{NodeID: 1, TLS: nodeTLS(t, dirs["rogue/n1"])})
		_, err := a.dialPeer(context.Background(), b.Addr(), 2)
		var te *TLSError
		if !errors.As(err, &te) {
			t.Fatalf("dialPeer = %v, want a *TLSError", err)
		}
		if err := a.Send(2, b.Addr(), 0, []byte("let me in")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		if in.len() != 0 {
			t.Fatalf("a peer of another CA delivered %d messages", in.len())
		}
	})

	// A handshake that never comes is cut off at the deadline.
	t.Run("timeout", func(t *testing.T) {
		b := newTransport(t, Config{NodeID: 2, OnRequest: echo, HandshakeTimeout: 100 * time.Millisecond, TLS: nodeTLS(t, dirs["n2"])})
		c := dialRaw(t, b.Addr(), 0, 0)
		c.Write([]byte{0x16}) // a TLS record begins, and stalls
		expectClosed(t, c)
		waitFor(t, "the timeout to be counted", func() bool { return b.Stats().TLSRefused[RefusedTimeout] == 1 })
	})

	// A TLS dialer at a plain node is told to dial without TLS.
	t.Run("TLS client, plain node", func(t *testing.T) {
		logger, logs := testLogger()
		b := newTransport(t, Config{NodeID: 2, OnRequest: echo, Logger: logger})
		_, err := DialTLS(context.Background(), b.Addr(), clientTLSConfig(t, dirs["admin"]))
		if err == nil || !strings.Contains(err.Error(), "without --tls-dir") {
			t.Errorf("dial error %v", err)
		}
		waitFor(t, "the plain node to log it", func() bool { return logs.count("a TLS client dialed") == 1 })
	})
}

func TestConnsPerIPCap(t *testing.T) {
	checkGoroutines(t)
	b := newTransport(t, Config{NodeID: 2, OnRequest: echo, MaxConnsPerIP: 4})
	var idle []gonet.Conn
	for range 4 {
		idle = append(idle, dialRaw(t, b.Addr(), roleAdmin, 0))
	}
	// The fifth is closed at once, before its hello is read.
	c := dialRaw(t, b.Addr(), 0, 0)
	expectClosed(t, c)
	if s := b.Stats(); s.ConnsRefused != 1 {
		t.Fatalf("ConnsRefused = %d", s.ConnsRefused)
	}
	// Once one of the four leaves, a new connection is served.
	idle[0].Close()
	waitFor(t, "a new connection to be served", func() bool {
		cl, err := Dial(context.Background(), b.Addr())
		if err != nil {
			return false
		}
		defer cl.Close()
		_, err = cl.Call(context.Background(), []byte("x"))
		return err == nil
	})
}
