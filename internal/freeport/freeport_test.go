package freeport

import (
	"net"
	"strconv"
	"testing"
)

// TestNeverTwice: ports are handed out once, in the range, and bindable.
func TestNeverTwice(t *testing.T) {
	seen := map[string]bool{}
	for range 300 {
		a := Addr(t)
		if seen[a] {
			t.Fatalf("%s handed out twice", a)
		}
		seen[a] = true
		_, port, _ := net.SplitHostPort(a)
		if p, _ := strconv.Atoi(port); p < 20000 || p > 29999 {
			t.Fatalf("port %d outside 20000-29999", p)
		}
	}
	base := Run(t, 3)
	for i := range 3 {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(base+i)))
		if err != nil {
			t.Fatalf("port %d of a run is not free: %v", base+i, err)
		}
		l.Close()
	}
}
