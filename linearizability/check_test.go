package linearizability

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// testTimeout bounds each block's search in tests. Every history here except
// the time-out test is decided in microseconds; the bound only keeps a
// regression from hanging the test binary and is never asserted on.
const testTimeout = time.Minute

// ignoreInternals compares only Result's exported fields.
var ignoreInternals = cmpopts.IgnoreUnexported(Result{})

func TestCheck(t *testing.T) {
	tests := []struct {
		name string
		ops  []top
		want Result
	}{
		// Linearizable.
		{
			name: "empty history",
			want: Result{OK: true},
		},
		{
			name: "sequential",
			ops: []top{
				r(0, 0, 5),
				w(1, 10, 20),
				r(1, 30, 40),
				w(2, 50, 60),
				r(2, 70, 80),
				r(2, 90, 100),
			},
			want: Result{OK: true, Blocks: 1, Ops: 6},
		},
		{
			name: "touching intervals are concurrent",
			ops: []top{
				w(1, 0, 10),
				r(0, 10, 20).on(1, 1),
			},
			want: Result{OK: true, Blocks: 1, Ops: 2},
		},
		{
			name: "concurrent writes, later reads see the second",
			ops: []top{
				w(1, 0, 100).on(0, 1),
				w(2, 10, 110).on(1, 1),
				r(1, 50, 60).on(2, 1),
				r(2, 120, 130).on(2, 1),
				r(2, 140, 150).on(0, 1),
			},
			want: Result{OK: true, Blocks: 1, Ops: 5},
		},
		{
			name: "concurrent writes, later reads see the first",
			ops: []top{
				w(1, 0, 100).on(0, 1),
				w(2, 10, 110).on(1, 1),
				r(2, 50, 60).on(2, 1),
				r(1, 120, 130).on(2, 1),
				r(1, 140, 150).on(0, 1),
			},
			want: Result{OK: true, Blocks: 1, Ops: 5},
		},
		{
			name: "read concurrent with write returns old value",
			ops: []top{
				w(1, 0, 10),
				w(2, 20, 40).on(1, 1),
				r(1, 25, 30).on(2, 1),
				r(2, 50, 60).on(2, 1),
			},
			want: Result{OK: true, Blocks: 1, Ops: 4},
		},
		{
			name: "read concurrent with first write returns initial zero",
			ops: []top{
				w(1, 0, 20),
				r(0, 5, 10).on(1, 1),
			},
			want: Result{OK: true, Blocks: 1, Ops: 2},
		},
		{
			name: "unknown write takes effect later",
			ops: []top{
				w(1, 0, 10),
				w(2, 20, 0).with(unknown),
				r(1, 30, 40).on(1, 1),
				r(1, 50, 60).on(1, 1),
				r(2, 1000, 1010).on(1, 1),
				r(2, 2000, 2010).on(2, 1),
			},
			want: Result{OK: true, Blocks: 1, Ops: 6},
		},
		{
			name: "unknown write never takes effect",
			ops: []top{
				w(1, 0, 10),
				w(2, 20, 0).with(unknown),
				r(1, 30, 40).on(1, 1),
				r(1, 5000, 5010).on(1, 1),
			},
			want: Result{OK: true, Blocks: 1, Ops: 4},
		},
		{
			name: "write still open is treated as unknown",
			ops: []top{
				w(1, 0, 10),
				w(2, 20, 0).with(open),
				r(2, 30, 40).on(1, 1),
			},
			want: Result{OK: true, Blocks: 1, Ops: 3},
		},
		{
			name: "failed and unknown ops are dropped",
			ops: []top{
				w(1, 0, 10),
				w(2, 20, 30).with(failed),
				r(2, 40, 50).with(failed),  // value never set: dropped
				r(9, 40, 50).with(unknown), // likewise
				r(1, 60, 70),
			},
			want: Result{OK: true, Blocks: 1, Ops: 2},
		},

		// Not linearizable.
		{
			name: "stale read after completed write",
			ops: []top{
				w(1, 0, 10),
				r(0, 20, 30).on(1, 1),
			},
			want: Result{Blocks: 1, Ops: 2, Illegal: []uint64{1}},
		},
		{
			name: "read of a never-written value",
			ops: []top{
				w(1, 0, 10),
				r(99, 20, 30),
			},
			want: Result{Blocks: 1, Ops: 2, Illegal: []uint64{1}},
		},
		{
			name: "read of a never-written value on a fresh block",
			ops: []top{
				r(5, 0, 10).on(0, 42),
			},
			want: Result{Blocks: 1, Ops: 1, Illegal: []uint64{42}},
		},
		{
			name: "lost write",
			ops: []top{
				w(1, 0, 10),
				w(2, 20, 30).on(1, 1),
				r(1, 40, 50).on(2, 1),
			},
			want: Result{Blocks: 1, Ops: 3, Illegal: []uint64{1}},
		},
		{
			name: "new-old inversion across sequential reads",
			ops: []top{
				w(1, 0, 10),
				w(2, 20, 100).on(1, 1),
				r(2, 30, 40).on(2, 1),
				r(1, 50, 60).on(3, 1),
			},
			want: Result{Blocks: 1, Ops: 4, Illegal: []uint64{1}},
		},
		{
			name: "failed write observed",
			ops: []top{
				w(1, 0, 10),
				w(2, 20, 30).with(failed),
				r(2, 40, 50),
			},
			want: Result{Blocks: 1, Ops: 2, Illegal: []uint64{1}},
		},
		{
			name: "unknown write observed before its call",
			ops: []top{
				r(2, 0, 10).on(1, 1),
				w(2, 20, 0).with(unknown),
			},
			want: Result{Blocks: 1, Ops: 2, Illegal: []uint64{1}},
		},
		{
			name: "unknown write takes effect then is undone",
			ops: []top{
				w(1, 0, 10),
				w(2, 20, 0).with(unknown),
				r(2, 30, 40).on(1, 1),
				r(1, 50, 60).on(1, 1),
			},
			want: Result{Blocks: 1, Ops: 4, Illegal: []uint64{1}},
		},

		// Several blocks.
		{
			name: "only the bad blocks are named",
			ops: []top{
				w(1, 0, 10).on(0, 3),
				r(1, 20, 30).on(1, 3),
				w(2, 0, 10).on(0, 17),
				r(0, 20, 30).on(1, 17), // stale
				w(3, 0, 10).on(2, 8),
				r(3, 5, 30).on(3, 8),
				r(4, 0, 30).on(2, 5), // never written
				w(4, 0, 10).on(4, 9), // same value as block 5 read: other block
				r(4, 20, 30).on(4, 9),
			},
			want: Result{Blocks: 5, Ops: 9, Illegal: []uint64{5, 17}},
		},
		{
			name: "value written to another block cannot be read",
			ops: []top{
				w(7, 0, 10).on(0, 1),
				r(7, 20, 30).on(0, 2),
			},
			want: Result{Blocks: 2, Ops: 2, Illegal: []uint64{2}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Check(record(tt.ops), testTimeout)
			if diff := cmp.Diff(tt.want, got, ignoreInternals); diff != "" {
				t.Errorf("Check() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCheckGenerated(t *testing.T) {
	small := genConfig{ops: 500, blocks: 20, hot: 3, hotFrac: 0.5, clients: 16, unknownFrac: 0.02, failFrac: 0.02}
	tests := []struct {
		name string
		cfg  genConfig
		seed uint64
	}{
		{"small seed 1", small, 1},
		{"small seed 2", small, 2},
		{"small seed 3", small, 3},
		{"bench shape seed 1", benchConfig, 1},
		{"bench shape seed 2", benchConfig, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops := genOps(tt.seed, tt.cfg)
			h := record(ops)
			got := Check(h, testTimeout)
			want := Result{OK: true, Blocks: got.Blocks, Ops: h.Len()}
			if diff := cmp.Diff(want, got, ignoreInternals); diff != "" {
				t.Fatalf("generated history: Check() mismatch (-want +got):\n%s", diff)
			}
			if got.Blocks < tt.cfg.blocks/2 {
				t.Errorf("only %d blocks checked, generator is broken", got.Blocks)
			}

			// Corrupt one completed read on a hot block and one on a cold
			// block: exactly those two blocks must be named.
			var bad []uint64
			for i := range ops {
				op := &ops[i]
				if op.kind != Read || op.fate != done {
					continue
				}
				if hot := op.block < uint64(tt.cfg.hot); (hot && len(bad) == 0) || (!hot && len(bad) == 1) {
					op.value = 1<<63 | uint64(i)
					bad = append(bad, op.block)
				}
				if len(bad) == 2 {
					break
				}
			}
			if bad[0] > bad[1] {
				bad[0], bad[1] = bad[1], bad[0]
			}
			got = Check(record(ops), testTimeout)
			want = Result{Blocks: got.Blocks, Ops: h.Len(), Illegal: bad}
			if diff := cmp.Diff(want, got, ignoreInternals); diff != "" {
				t.Errorf("corrupted history: Check() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// hardBlock returns n writes to block, all concurrent, followed by a read of a
// value never written. The history is illegal, but porcupine can only tell
// after trying every order of the writes: about n·2^(n-1) search states.
func hardBlock(block uint64, n int) []top {
	var ops []top
	for i := range n {
		ops = append(ops, w(uint64(i+1), int64(i), int64(1000+i)).on(i, block))
	}
	return append(ops, r(1<<40, 2000, 2010).on(0, block))
}

func TestCheckTimeout(t *testing.T) {
	tests := []struct {
		name    string
		ops     []top
		timeout time.Duration
		want    Result
	}{
		{
			name:    "one hard block",
			ops:     hardBlock(4, 40),
			timeout: time.Nanosecond,
			want:    Result{Blocks: 1, Ops: 41, TimedOut: []uint64{4}},
		},
		{
			name:    "two hard blocks",
			ops:     append(hardBlock(6, 40), hardBlock(2, 40)...),
			timeout: time.Millisecond,
			want:    Result{Blocks: 2, Ops: 82, TimedOut: []uint64{2, 6}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Check(record(tt.ops), tt.timeout)
			if diff := cmp.Diff(tt.want, got, ignoreInternals); diff != "" {
				t.Errorf("Check() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCheckUnobservedUnknownWrites: writes of unknown outcome whose value
// no read returned are left out of the search (they can always go last), so
// a burst of them does not make a block undecidable, and leaving them out
// neither hides a violation nor drops one a read needs.
func TestCheckUnobservedUnknownWrites(t *testing.T) {
	burst := func(block uint64, ops ...top) []top {
		for i := range 40 { // 40 concurrent unknown writes nobody read
			ops = append(ops, w(uint64(1000+i), int64(100+i), 0).on(i+2, block).with(unknown))
		}
		return ops
	}
	tests := []struct {
		name string
		ops  []top
		want Result
	}{
		{
			name: "legal with a burst",
			ops:  burst(1, w(7, 0, 10), r(7, 20, 30).on(1, 1), r(7, 500, 510).on(1, 1), w(8, 520, 530), r(8, 540, 550).on(1, 1)),
			want: Result{OK: true, Blocks: 1, Ops: 45},
		},
		{
			name: "illegal with a burst",
			ops:  burst(1, w(7, 0, 10), w(8, 20, 30), r(7, 500, 510).on(1, 1)),
			want: Result{Blocks: 1, Ops: 43, Illegal: []uint64{1}},
		},
		{
			name: "an unknown write a read returned is kept",
			ops:  burst(1, w(7, 0, 10), w(9, 15, 0).on(5, 1).with(unknown), r(9, 500, 510).on(1, 1)),
			want: Result{OK: true, Blocks: 1, Ops: 43},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Check(record(tt.ops), 10*time.Second)
			if diff := cmp.Diff(tt.want, got, ignoreInternals); diff != "" {
				t.Errorf("Check() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestResultString(t *testing.T) {
	tests := []struct {
		name string
		res  Result
		want string
	}{
		{
			name: "ok",
			res:  Result{OK: true, Blocks: 120, Ops: 2000},
			want: "linearizable: 120 blocks, 2000 ops",
		},
		{
			name: "illegal",
			res:  Result{Blocks: 120, Ops: 2000, Illegal: []uint64{3, 17}},
			want: "NOT linearizable: blocks [3 17] illegal, [] timed out (of 120 blocks, 2000 ops)",
		},
		{
			name: "timed out",
			res:  Result{Blocks: 1, Ops: 41, TimedOut: []uint64{4}},
			want: "NOT linearizable: blocks [] illegal, [4] timed out (of 1 blocks, 41 ops)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.res.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}

// visualOps has a good block 1 and a bad block 7, each with a distinctive
// note and write value.
func visualOps() []top {
	good := w(0xc0ffee, 0, 10).on(0, 1)
	good.note = "good-block-note"
	bad := w(0xfeedface, 0, 10).on(1, 7)
	bad.note = "bad-block-note gw=3 epoch=7"
	return []top{
		good,
		r(0xc0ffee, 20, 30).on(0, 1),
		bad,
		r(0, 20, 30).on(1, 7), // stale
		w(0xabcdef, 40, 0).on(2, 7).with(unknown),
		r(0xabcdef, 50, 60).on(1, 7), // keeps the unknown write in the history
	}
}

func TestVisualize(t *testing.T) {
	okOps := visualOps()[:2]
	tests := []struct {
		name    string
		ops     []top
		blocks  []uint64 // nil: Visualize, else VisualizeBlocks
		want    []string
		notWant []string
	}{
		{
			name:    "failing result shows only failing blocks",
			ops:     visualOps(),
			want:    []string{"<html", "bad-block-note gw=3 epoch=7", "w 0xfeedface", "w? 0xabcdef", "outcome unknown", "block 7"},
			notWant: []string{"good-block-note", "0xc0ffee"},
		},
		{
			name: "linearizable result shows every block",
			ops:  okOps,
			want: []string{"<html", "good-block-note", "w 0xc0ffee", "block 1"},
		},
		{
			name:    "chosen blocks",
			ops:     visualOps(),
			blocks:  []uint64{1, 1},
			want:    []string{"good-block-note", "w 0xc0ffee"},
			notWant: []string{"bad-block-note"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := Check(record(tt.ops), testTimeout)
			var buf bytes.Buffer
			var err error
			if tt.blocks == nil {
				err = res.Visualize(&buf)
			} else {
				err = res.VisualizeBlocks(&buf, tt.blocks...)
			}
			if err != nil {
				t.Fatalf("visualize: %v", err)
			}
			html := buf.String()
			for _, s := range tt.want {
				if !strings.Contains(html, s) {
					t.Errorf("HTML does not contain %q", s)
				}
			}
			for _, s := range tt.notWant {
				if strings.Contains(html, s) {
					t.Errorf("HTML contains %q", s)
				}
			}
		})
	}
}

func TestVisualizeTimedOut(t *testing.T) {
	ops := hardBlock(4, 40)
	ops[0].note = "hard-block-note"
	res := Check(record(ops), time.Millisecond)
	var buf bytes.Buffer
	if err := res.Visualize(&buf); err != nil {
		t.Fatalf("Visualize: %v", err)
	}
	for _, s := range []string{"hard-block-note", "timed out"} {
		if !strings.Contains(buf.String(), s) {
			t.Errorf("HTML does not contain %q", s)
		}
	}
}

func TestVisualizeBlocksUnknownBlock(t *testing.T) {
	res := Check(record(visualOps()), testTimeout)
	if err := res.VisualizeBlocks(&bytes.Buffer{}, 1, 99); err == nil {
		t.Errorf("VisualizeBlocks(99) succeeded, want error for block without ops")
	}
}

func TestWriteHTML(t *testing.T) {
	res := Check(record(visualOps()), testTimeout)
	path := filepath.Join(t.TempDir(), "history.html")
	if err := res.WriteHTML(path); err != nil {
		t.Fatalf("WriteHTML: %v", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte("w 0xfeedface")) {
		t.Errorf("%s does not contain the failing block's write", path)
	}

	if err := res.WriteHTML(filepath.Join(t.TempDir(), "missing", "x.html")); err == nil {
		t.Errorf("WriteHTML into a missing directory succeeded")
	} else if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("WriteHTML error %v does not wrap a not-exist error", err)
	}
}

func BenchmarkCheck(b *testing.B) {
	h := record(genOps(1, benchConfig))
	b.ReportMetric(float64(h.Len()), "ops/history")
	var res Result
	for b.Loop() {
		res = Check(h, time.Minute)
	}
	if !res.OK {
		b.Fatalf("generated history: %v", res)
	}
}
