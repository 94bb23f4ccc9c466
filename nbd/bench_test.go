package nbd

import (
	"bytes"
	"fmt"
	"log/slog"
	"testing"
)

// BenchmarkServer4KRead and BenchmarkServer4KWrite measure 4 KiB requests
// through the whole server over loopback TCP with the raw test client,
// at queue depth 1 and 16, with structured replies; BenchmarkServerTLS4K*
// the same over TLS.
func BenchmarkServer4KRead(b *testing.B)     { benchServer(b, cmdRead, false) }
func BenchmarkServer4KWrite(b *testing.B)    { benchServer(b, cmdWrite, false) }
func BenchmarkServerTLS4KRead(b *testing.B)  { benchServer(b, cmdRead, true) }
func BenchmarkServerTLS4KWrite(b *testing.B) { benchServer(b, cmdWrite, true) }

func benchServer(b *testing.B, typ uint16, withTLS bool) {
	const size, bs = 64 << 20, 4096
	mb := NewMemBackend()
	vol := mb.Add("disk", size)
	if err := vol.WriteAt(b.Context(), bytes.Repeat([]byte{0x5a}, size), 0, false); err != nil {
		b.Fatal(err)
	}
	srv := &Server{Backend: mb, Logger: slog.New(slog.DiscardHandler)}
	ca := newTestCA(b, "bench CA")
	if withTLS {
		srv.TLSConfig = ca.serverConfig(b)
	}
	addr := startServer(b, srv)
	for _, depth := range []int{1, 16} {
		b.Run(fmt.Sprintf("qd=%d", depth), func(b *testing.B) {
			c := dial(b, addr)
			c.clientFlags(clientFlagFixedNewstyle | clientFlagNoZeroes)
			if withTLS {
				if err := c.startTLS(ca.clientConfig(b, "bench", ca)); err != nil {
					b.Fatal(err)
				}
			}
			if err := c.negotiate("disk", true, false); err != nil {
				b.Fatal(err)
			}
			var payload []byte
			if typ == cmdWrite {
				payload = bytes.Repeat([]byte{0xa5}, bs)
			}
			slots := make(chan struct{}, depth)
			errc := make(chan error, 1)
			b.SetBytes(bs)
			b.ReportAllocs()
			b.ResetTimer()
			go func() {
				for range b.N {
					r, err := c.recv()
					if err == nil && r.errno != 0 {
						err = fmt.Errorf("errno %d: %s", r.errno, r.msg)
					}
					if err != nil {
						errc <- err
						return
					}
					<-slots
				}
				errc <- nil
			}()
			for i := range b.N {
				slots <- struct{}{}
				c.send(typ, 0, uint64(i%(size/bs))*bs, bs, payload)
			}
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			c.disconnect()
		})
	}
}
