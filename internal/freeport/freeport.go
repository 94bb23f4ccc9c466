// Package freeport hands out loopback ports for tests that start daemons:
// ports below the ephemeral range (so no outgoing connection takes one
// between the check and the daemon's bind), never the same one twice in a
// process (a port closed after the check would otherwise be found free
// again).
package freeport

import (
	"crypto/rand"
	"fmt"
	"net"
	"sync"
	"testing"
)

var (
	mu    sync.Mutex
	given = map[int]bool{}
)

// Run returns the first of n consecutive ports in 20000-29999 that were
// free a moment ago and were not handed out before.
func Run(t testing.TB, n int) int {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	for try := 0; try < 200; try++ {
		var buf [2]byte
		_, _ = rand.Read(buf[:])
		base := 20000 + int(buf[0])<<8%9000 + int(buf[1])%900
		var ls []net.Listener
		for i := 0; i < n && !given[base+i]; i++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", base+i))
			if err != nil {
				break
			}
			ls = append(ls, l)
		}
		for _, l := range ls {
			l.Close()
		}
		if len(ls) == n {
			for i := 0; i < n; i++ {
				given[base+i] = true
			}
			return base
		}
	}
	t.Fatal("freeport: no free port range")
	return 0
}

// Addr returns a loopback address with a port from Run.
func Addr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", Run(t, 1))
}
