package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
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

func TestGCPercent(t *testing.T) {
	tests := []struct {
		flag  int
		gogc  string
		want  int
		apply bool
	}{
		{defaultGCPercent, "", defaultGCPercent, true},
		{100, "", 100, true},
		{-1, "", -1, true}, // off, as GOGC=off
		{defaultGCPercent, "50", 0, false},
		{defaultGCPercent, "off", 0, false},
	}
	for _, tt := range tests {
		got, apply := gcPercent(tt.flag, tt.gogc)
		if got != tt.want || apply != tt.apply {
			t.Errorf("gcPercent(%d, %q) = %d, %v; want %d, %v", tt.flag, tt.gogc, got, apply, tt.want, tt.apply)
		}
	}
}
