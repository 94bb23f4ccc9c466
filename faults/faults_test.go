package faults

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sheepdog-go/sheepdog/internal/testbin"
)

// sheepdogBinary builds the sheepdog binary once per test run.
func sheepdogBinary(t *testing.T) string {
	t.Helper()
	return testbin.Sheepdog(t, "../cmd/sheepdog")
}

// needRoot fails (never skips) where the harness cannot run: it needs
// root for network namespaces, nftables and tmpfs mounts.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the fault harness needs root (network namespaces, nftables, tmpfs mounts)")
	}
	if err := EnsureTools(context.Background(), slog.Default()); err != nil {
		t.Fatal(err)
	}
}

// testLog sends the harness's progress to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

func TestScheduleIsTheSeeds(t *testing.T) {
	a := NewSchedule(42, 0, 20, nil, 10*time.Millisecond)
	b := NewSchedule(42, 0, 20, nil, 10*time.Millisecond)
	if diff := cmp.Diff(a, b); diff != "" {
		t.Fatalf("one seed, two schedules (-a +b):\n%s", diff)
	}
	if c := NewSchedule(43, 0, 20, nil, 10*time.Millisecond); cmp.Equal(a, c) {
		t.Fatal("seeds 42 and 43 gave the same schedule")
	}
	// Every kind comes once before any comes twice.
	var first []string
	for _, f := range a.Faults[:len(Kinds)] {
		first = append(first, f.Kind)
	}
	slices.Sort(first)
	want := slices.Clone(Kinds)
	slices.Sort(want)
	if diff := cmp.Diff(want, first); diff != "" {
		t.Errorf("the first %d faults are not every kind once (-want +got):\n%s", len(Kinds), diff)
	}
	for _, f := range a.Faults {
		if f.Kind == KindPause && f.Hold <= time.Second {
			t.Errorf("a pause of %v is not longer than the failure timeout (1s at a 10ms tick)", f.Hold)
		}
	}
	if a.Nodes < 3 || a.Nodes > 5 || a.Copies < 2 || a.Copies > 3 {
		t.Errorf("schedule %v: nodes or copies out of range", a)
	}
}

func TestParseKinds(t *testing.T) {
	got, err := ParseKinds("kill, pause")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{KindKill, KindPause}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if _, err := ParseKinds("kill,nope"); err == nil {
		t.Error("an unknown kind was accepted")
	}
}

// TestShortRun is the short run of `make test`: fixed seeds whose kinds
// together cover every fault kind, each run one fault of each of its kinds.
func TestShortRun(t *testing.T) {
	needRoot(t)
	bin := sheepdogBinary(t)
	runs := []struct {
		seed  uint64
		kinds []string
		net   string // "": nftables
	}{
		{101, []string{KindPartition, KindOneWay, KindIsolateLeader, KindKill}, ""},
		{102, []string{KindIsolateAttacher, KindSplit, KindPause, KindRestart}, ""},
		{103, []string{KindENOSPC, KindBitFlip, KindDeleteObject, KindTruncateJournal}, ""},
		{104, []string{KindReplaceDisk, KindReplaceDiskNewAddr, KindPause}, ""},
		// The fallback for kernels without nftables, on every network kind.
		{105, []string{KindPartition, KindOneWay, KindIsolateLeader, KindIsolateAttacher, KindSplit}, NetProxy},
	}
	var covered []string
	for _, r := range runs {
		covered = append(covered, r.kinds...)
	}
	for _, k := range Kinds {
		if !slices.Contains(covered, k) {
			t.Fatalf("the short run leaves out fault kind %s", k)
		}
	}
	out := t.TempDir()
	for _, r := range runs {
		t.Run(fmt.Sprint(r.seed), func(t *testing.T) {
			rep, err := Run(context.Background(), Config{
				Seed: r.seed, Bin: bin, Out: out, Faults: len(r.kinds), Kinds: r.kinds, Net: r.net, Log: testLogger(t),
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Log(rep.Line())
			want := "nftables"
			if r.net == NetProxy {
				want = "tcp-proxy"
			}
			if rep.Mechanism != want {
				t.Errorf("network faults made by %q, want %s", rep.Mechanism, want)
			}
			if got := len(rep.Heals); got != len(r.kinds) {
				t.Errorf("%d faults ran, want %d", got, len(r.kinds))
			}
			if !rep.OK() {
				t.Errorf("seed %d failed; its directory is %s (replay: bin/sheepdog faults --seed %d --faults %d --kinds %s --net %s):\n%s",
					r.seed, rep.Dir, r.seed, len(r.kinds), strings.Join(r.kinds, ","), netFlag(r.net), strings.Join(rep.Problems, "\n"))
			}
		})
	}
}

// TestPlantedBugIsCaught is the harness's canary: with the planted bug
// read-any (reads served by any replica, without lease or recovery) a
// node that was down serves the stale values it kept, and the run must
// fail. A run that happens not to read a stale replica passes, so it
// tries a few seeds and wants one failure.
func TestPlantedBugIsCaught(t *testing.T) {
	needRoot(t)
	bin := sheepdogBinary(t)
	out := t.TempDir()
	kinds := []string{KindKill, KindRestart}
	for seed := uint64(201); seed < 205; seed++ {
		rep, err := Run(context.Background(), Config{
			Seed: seed, Bin: bin, Out: out, Nodes: 3, Faults: 3, Kinds: kinds, Plant: "read-any",
			HealBound: 20 * time.Second, Log: testLogger(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Log(rep.Line())
		if !rep.OK() {
			t.Logf("read-any caught by seed %d:\n%s", seed, strings.Join(rep.Problems, "\n"))
			return
		}
	}
	t.Fatal("the harness passed every seed with the planted bug read-any switched on")
}

func netFlag(mode string) string {
	if mode == "" {
		return NetAuto
	}
	return mode
}
