package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/sheepdog-go/sheepdog/daemon"
)

// TestPrintRecovery: `node recovery` shows per node the objects and bytes
// fetched, the rate, the time left and the pacing.
func TestPrintRecovery(t *testing.T) {
	rows := []daemon.NodeStatus{
		{NodeRow: daemon.NodeRow{Index: 0, Addr: "127.0.0.1:7000"}, Epoch: 4, Total: 100, Remaining: 25,
			RecoveryProgress: daemon.RecoveryProgress{BytesTotal: 400 << 20, BytesRemaining: 100 << 20, Rate: 50 << 20, ETA: 2, Cap: 16 << 20, Yielding: true}},
		{NodeRow: daemon.NodeRow{Index: 1, Addr: "127.0.0.1:7001"}, Epoch: 4, Finished: true},
		{NodeRow: daemon.NodeRow{Index: 2, Addr: "127.0.0.1:7002"}, Dir: "unreachable: connection refused"},
	}
	var b bytes.Buffer
	if err := printRecovery(&b, rows); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"75.0%", "75/100", "300.0 MB/400.0 MB", "50.0 MiB/s", "2s", "recovering (clients busy: at most 16.0 MB/s)",
		"done, waiting for the others", "unreachable: connection refused", "ETA"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestRecoveryFlags(t *testing.T) {
	var cfg daemon.Config
	r := recoveryFlags{rate: "100M", busyRate: "0"}
	if err := r.apply(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.RecoveryRate != 100<<20 || cfg.RecoveryBusyRate >= 0 {
		t.Errorf("100M, 0: rate %d busy %d", cfg.RecoveryRate, cfg.RecoveryBusyRate)
	}
	r = recoveryFlags{rate: "0", busyRate: sizeFlagStr(daemon.DefaultRecoveryBusyRate)}
	if err := r.apply(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.RecoveryRate != 0 || cfg.RecoveryBusyRate != daemon.DefaultRecoveryBusyRate {
		t.Errorf("defaults: rate %d busy %d", cfg.RecoveryRate, cfg.RecoveryBusyRate)
	}
	if err := (&recoveryFlags{rate: "fast", busyRate: "0"}).apply(&cfg); err == nil {
		t.Error("--recovery-rate fast accepted")
	}
}
