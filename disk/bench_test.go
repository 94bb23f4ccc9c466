package disk

import (
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
)

// benchObjects * 4 MiB is the working set of the write benchmarks.
const benchObjects = 64

// cpuMeter reports the process CPU time per operation (cpu-ns/op) between
// its creation and report: the work of background goroutines (commits, the
// applier, checkpoints) included, and less sensitive to a busy machine than
// wall time.
type cpuMeter time.Duration

func startCPU() cpuMeter { return cpuMeter(processCPU()) }

func (c cpuMeter) report(b *testing.B) {
	if b.N > 0 && c > 0 {
		b.ReportMetric(float64(processCPU()-time.Duration(c))/float64(b.N), "cpu-ns/op")
	}
}

func benchWrite4K(b *testing.B, sync bool) {
	s := openT(b, b.TempDir(), quietOpts())
	data := pattern(1, ChunkSize)
	b.SetBytes(ChunkSize)
	i := 0
	cpu := startCPU()
	for b.Loop() {
		oid := uint64(i % benchObjects)
		off := int64(i/benchObjects%1024) * ChunkSize
		if err := s.Write(oid, ObjectMeta{Version: uint64(i + 1)}, off, data, sync); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.StopTimer()
	cpu.report(b)
	closeT(b, s)
}

// BenchmarkWrite4K: 4 KiB writes without sync, round-robin over 64
// objects. The sustained rate includes the background group commits, the
// application to the object files and checkpoints (through backpressure).
func BenchmarkWrite4K(b *testing.B) { benchWrite4K(b, false) }

// BenchmarkWrite4KSync: 4 KiB writes with sync=true from one goroutine:
// one journal fdatasync per write.
func BenchmarkWrite4KSync(b *testing.B) { benchWrite4K(b, true) }

// BenchmarkWrite4KSyncParallel: sync=true writes from many goroutines
// (each to its own objects) share fdatasyncs through group commit.
func BenchmarkWrite4KSyncParallel(b *testing.B) {
	s := openT(b, b.TempDir(), quietOpts())
	data := pattern(1, ChunkSize)
	b.SetBytes(ChunkSize)
	b.SetParallelism(16)
	var next uint64
	var mu = make(chan struct{}, 1)
	mu <- struct{}{}
	b.ResetTimer()
	cpu := startCPU()
	b.RunParallel(func(pb *testing.PB) {
		<-mu
		next++
		oid := next
		mu <- struct{}{}
		i := 0
		for pb.Next() {
			off := int64(i%1024) * ChunkSize
			if err := s.Write(oid, ObjectMeta{Version: uint64(i + 1)}, off, data, true); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	b.StopTimer()
	cpu.report(b)
	closeT(b, s)
}

// BenchmarkRead4K: random aligned 4 KiB reads from 64 applied 4 MiB objects
// (page cache), with checksum verification.
func BenchmarkRead4K(b *testing.B) {
	s := openT(b, b.TempDir(), quietOpts())
	obj := pattern(2, 4<<20)
	for oid := range uint64(benchObjects) {
		if err := s.Put(oid, ObjectMeta{Version: 1}, obj, false); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.quiesce(); err != nil {
		b.Fatal(err)
	}
	r := rand.New(rand.NewPCG(1, 2))
	p := make([]byte, ChunkSize)
	b.SetBytes(ChunkSize)
	cpu := startCPU()
	for b.Loop() {
		oid := uint64(r.IntN(benchObjects))
		off := int64(r.IntN(1024)) * ChunkSize
		if _, err := s.Read(oid, off, p); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cpu.report(b)
	closeT(b, s)
}

// BenchmarkPut4M: whole-object 4 MiB replacements (recovery copies) without
// sync, over 16 objects.
func BenchmarkPut4M(b *testing.B) {
	s := openT(b, b.TempDir(), quietOpts())
	data := pattern(3, 4<<20)
	b.SetBytes(4 << 20)
	i := 0
	for b.Loop() {
		if err := s.Put(uint64(i%16), ObjectMeta{Version: uint64(i + 1)}, data, false); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.StopTimer()
	closeT(b, s)
}

// BenchmarkWrite4KParallel mimics a replica under fio randwrite
// iodepth=32: 32 concurrent writers (sync=false), each issuing 4 KiB
// aligned writes at random offsets of random 4 MiB objects among its own 8
// (writers never mutate the same object concurrently, as the Store
// requires). 256 objects in all.
func BenchmarkWrite4KParallel(b *testing.B) {
	s := openT(b, b.TempDir(), quietOpts())
	data := pattern(1, ChunkSize)
	b.SetBytes(ChunkSize)
	const writers, perWriter = 32, 8
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((writers + procs - 1) / procs)
	var next atomic.Uint64
	b.ResetTimer()
	cpu := startCPU()
	b.RunParallel(func(pb *testing.PB) {
		w := next.Add(1) - 1
		r := rand.New(rand.NewPCG(w, 3))
		i := uint64(0)
		for pb.Next() {
			oid := w + writers*uint64(r.IntN(perWriter))
			off := int64(r.IntN(1024)) * ChunkSize
			i++
			if err := s.Write(oid, ObjectMeta{Version: i, ReqID: i}, off, data, false); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	cpu.report(b)
	closeT(b, s)
}

// benchWrite1M: sequential 1 MiB writes over 64 objects, the data handed
// over (owned, as the daemon does) or copied by the store. The buffers are
// never changed, so handing the same ones over again is within the rules.
func benchWrite1M(b *testing.B, owned bool) {
	s := openT(b, b.TempDir(), quietOpts())
	bufs := make([][]byte, 16)
	for i := range bufs {
		bufs[i] = pattern(uint64(i), 1<<20)
	}
	write := s.Write
	if owned {
		write = s.WriteOwned
	}
	b.SetBytes(1 << 20)
	i := 0
	cpu := startCPU()
	for b.Loop() {
		oid := uint64(i / 4 % benchObjects)
		off := int64(i%4) << 20
		if err := write(oid, ObjectMeta{Version: uint64(i + 1)}, off, bufs[i%len(bufs)], false); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.StopTimer()
	cpu.report(b)
	closeT(b, s)
}

// BenchmarkWrite1M: Write copies each 1 MiB buffer (the caller keeps it).
func BenchmarkWrite1M(b *testing.B) { benchWrite1M(b, false) }

// BenchmarkWrite1MOwned: WriteOwned keeps the buffer; the difference to
// BenchmarkWrite1M is the store's copy.
func BenchmarkWrite1MOwned(b *testing.B) { benchWrite1M(b, true) }
