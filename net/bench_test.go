package net

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkSend4K measures end-to-end throughput of 4 KiB peer frames
// over loopback: the clock stops when the receiver has all of them.
func BenchmarkSend4K(b *testing.B) {
	var got atomic.Int64
	recv := newTransport(b, Config{NodeID: 2, OnMessage: func(uint64, []byte) { got.Add(1) }})
	send := newTransport(b, Config{NodeID: 1})
	payload := make([]byte, 4<<10)
	addr := recv.Addr()
	// Connect first so that dialing is not measured.
	sendRetry(b, send, 2, recv.Addr(), 0, payload)
	sendRetry(b, send, 2, recv.Addr(), 1, payload)
	waitFor(b, "warm-up frames", func() bool { return got.Load() == 2 })
	got.Store(0)

	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for {
			err := send.Send(2, addr, uint64(i), payload)
			if err == nil {
				break
			}
			if !errors.Is(err, ErrQueueFull) {
				b.Fatal(err)
			}
			time.Sleep(50 * time.Microsecond) // back-pressure: let the writers drain
		}
	}
	for got.Load() < int64(b.N) {
		time.Sleep(50 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
}

// BenchmarkCall measures admin round trips on one Client, sequentially
// and from parallel callers.
func BenchmarkCall(b *testing.B) {
	tr := newTransport(b, Config{NodeID: 5, OnRequest: echo})
	c, err := Dial(context.Background(), tr.Addr())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	req := make([]byte, 128)
	ctx := context.Background()

	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Call(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.Call(ctx, req); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
