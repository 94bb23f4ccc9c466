package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func runIn(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), &env{stdout: &out, stderr: &errb, stdin: strings.NewReader("")}, args)
	return code, out.String(), errb.String()
}

func TestExitCodesAndHelp(t *testing.T) {
	tests := []struct {
		args []string
		code int
		out  string // substring of stdout or stderr
	}{
		{[]string{"--help"}, exitOK, "Commands:"},
		{[]string{"vdi", "--help"}, exitOK, "create"},
		{[]string{"vdi", "create", "--help"}, exitOK, "SHEEPDOG_"},
		{[]string{"sheep", "--help"}, exitOK, "--join"},
		{[]string{"sim", "--help"}, exitOK, "--plant"},
		{[]string{}, exitUsage, "subcommand is required"},
		{[]string{"bogus"}, exitUsage, "unknown command"},
		{[]string{"vdi", "create", "x"}, exitUsage, "needs NAME and SIZE"},
		{[]string{"vdi", "create", "x", "12Q"}, exitUsage, "invalid size"},
		{[]string{"vdi", "list", "--bogus"}, exitUsage, "bogus"},
		{[]string{"sheep"}, exitUsage, "--dir is required"},
		{[]string{"sheep", "--dir", "x", "--tick", "0s"}, exitUsage, "--tick must be between"},
		{[]string{"local", "--tick", "2s"}, exitUsage, "--tick must be between"},
		{[]string{"sheep", "--help"}, exitOK, "--tick"},
		{[]string{"sim", "--faults", "nonsense"}, exitUsage, "unknown fault"},
		{[]string{"sim", "--plant", "nonsense"}, exitUsage, "unknown planted bug"},
		{[]string{"node", "list", "-a", "127.0.0.1:1"}, exitFailure, "cannot reach a sheep"},
		{[]string{"sim", "--runs", "2", "--ops", "200"}, exitOK, "runs=2 failures=0"},
		{[]string{"sim", "--runs", "1", "--plant", "skip-recovery", "--seed", "1"}, exitFailure, "replay="},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			code, out, errs := runIn(tt.args...)
			if code != tt.code || !strings.Contains(out+errs, tt.out) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s\nwant %q", code, tt.code, out, errs, tt.out)
			}
		})
	}
}

func TestFlagsAnywhereAndFromEnvironment(t *testing.T) {
	// Flags after positional arguments: parsed (this one fails to
	// connect, which shows the address flag was taken).
	code, _, errs := runIn("vdi", "create", "alice", "1G", "-a", "127.0.0.1:1", "--copies", "2")
	if code != exitFailure || !strings.Contains(errs, "127.0.0.1:1") {
		t.Fatalf("flags after arguments: exit %d, %s", code, errs)
	}
	t.Setenv("SHEEPDOG_ADDRESS", "127.0.0.1:2")
	code, _, errs = runIn("node", "list")
	if code != exitFailure || !strings.Contains(errs, "127.0.0.1:2") {
		t.Fatalf("SHEEPDOG_ADDRESS: exit %d, %s", code, errs)
	}
	t.Setenv("SHEEPDOG_RUNS", "2")
	t.Setenv("SHEEPDOG_OPS", "150")
	code, out, _ := runIn("sim")
	if code != exitOK || !strings.Contains(out, "runs=2 ") {
		t.Fatalf("SHEEPDOG_RUNS: exit %d, %s", code, out)
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		err  bool
	}{
		{"512", 512, false},
		{"4K", 4 << 10, false},
		{"64M", 64 << 20, false},
		{"40G", 40 << 30, false},
		{"1T", 1 << 40, false},
		{"10GB", 10 << 30, false},
		{"2GiB", 2 << 30, false},
		{"1g", 1 << 30, false},
		{"", 0, true},
		{"G", 0, true},
		{"-1", 0, true},
		{"1.5G", 0, true},
		{"99999999999999999999P", 0, true},
	}
	for _, tt := range tests {
		got, err := parseSize(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("parseSize(%q) = %d, %v", tt.in, got, err)
		}
	}
}

func TestSizeStr(t *testing.T) {
	tests := map[uint64]string{0: "0 B", 1023: "1023 B", 4 << 20: "4.0 MB", 10 << 30: "10.0 GB", 1536: "1.5 KB"}
	for in, want := range tests {
		if got := sizeStr(in); got != want {
			t.Errorf("sizeStr(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestGCSettings(t *testing.T) {
	tests := []struct {
		name             string
		percent          int
		memory           string
		nodes            int
		gogc, gomemlimit string
		want             gcSettings
	}{
		{"defaults", defaultGCPercent, defaultMemory, 1, "", "", gcSettings{percent: -1, setPct: true, limit: 256 << 20, setLimit: true}},
		{"budget per node", defaultGCPercent, "100M", 3, "", "", gcSettings{percent: -1, setPct: true, limit: 300 << 20, setLimit: true}},
		{"a percentage too", 200, "1G", 1, "", "", gcSettings{percent: 200, setPct: true, limit: 1 << 30, setLimit: true}},
		{"no budget: collector stays on", -1, "0", 1, "", "", gcSettings{percent: 100, setPct: true}},
		{"no budget, a percentage", 50, "0", 1, "", "", gcSettings{percent: 50, setPct: true}},
		{"GOGC wins", defaultGCPercent, defaultMemory, 1, "50", "", gcSettings{limit: 256 << 20, setLimit: true}},
		{"GOMEMLIMIT wins", defaultGCPercent, defaultMemory, 1, "", "1GiB", gcSettings{percent: -1, setPct: true}},
		{"GOMEMLIMIT off, no budget", -1, "0", 1, "", "off", gcSettings{percent: 100, setPct: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := tuning{percent: tt.percent, memory: tt.memory}
			got, err := g.resolve(tt.nodes, tt.gogc, tt.gomemlimit)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(gcSettings{})); diff != "" {
				t.Errorf("resolve (-want +got):\n%s", diff)
			}
		})
	}
	if _, err := (&tuning{memory: "lots"}).resolve(1, "", ""); err == nil {
		t.Error("--memory lots accepted")
	}
}
