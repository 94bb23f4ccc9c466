package net

import (
	"context"
	gonet "net"
	"testing"
)

// A node listening on one loopback address dials its peers from that
// address, so a firewall rule on the address cuts both directions.
func TestPeerDialsFromListenAddress(t *testing.T) {
	checkGoroutines(t)
	tr := newTransport(t, Config{ListenAddr: "127.0.0.2:0", NodeID: 1})
	ln, err := gonet.Listen("tcp", "127.0.0.3:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		got <- c.RemoteAddr().(*gonet.TCPAddr).IP.String()
		c.Close()
	}()
	// The handshake fails (nobody answers it); the source address is what
	// this test is about.
	_, _ = tr.dialPeerConn(context.Background(), ln.Addr().String(), 2)
	if ip := <-got; ip != "127.0.0.2" {
		t.Fatalf("peer connection came from %s, want 127.0.0.2", ip)
	}
}

func TestDialerSource(t *testing.T) {
	tests := []struct {
		listen, peer, want string // want "": no source bound
	}{
		{"127.0.0.2:0", "127.0.0.5:7000", "127.0.0.2"},
		{"127.0.0.2:0", "localhost:7000", "127.0.0.2"},
		{"127.0.0.2:0", "10.1.2.3:7000", ""}, // loopback cannot reach it
		{"0.0.0.0:0", "127.0.0.5:7000", ""},
		{"[::]:0", "127.0.0.5:7000", ""},
	}
	for _, tt := range tests {
		a, err := gonet.ResolveTCPAddr("tcp", tt.listen)
		if err != nil {
			t.Fatal(err)
		}
		tr := &Transport{source: sourceIP(a)}
		d := tr.dialer(tt.peer)
		got := ""
		if d.LocalAddr != nil {
			got = d.LocalAddr.(*gonet.TCPAddr).IP.String()
		}
		if got != tt.want {
			t.Errorf("listen %s, peer %s: source %q, want %q", tt.listen, tt.peer, got, tt.want)
		}
	}
}
