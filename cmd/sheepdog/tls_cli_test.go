package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestIsLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr string
		want bool
	}{
		{"127.0.0.1:7000", true},
		{"127.0.0.2:7000", true},
		{"127.255.255.254:1", true},
		{"[::1]:7000", true},
		{"localhost:7000", true},
		{"127.0.0.1", true},
		{"::1", true},
		{"0.0.0.0:7000", false},
		{"[::]:7000", false},
		{":7000", false},
		{"10.0.0.1:7000", false},
		{"192.168.1.2", false},
		{"[2001:db8::1]:7000", false},
		{"", false},
		{"no-such-host.invalid:7000", false},
	} {
		if got := isLoopback(tc.addr); got != tc.want {
			t.Errorf("isLoopback(%q) = %v, want %v", tc.addr, got, tc.want)
		}
	}
}

func TestCheckExposure(t *testing.T) {
	loop, wild := []exposed{{"--listen", "127.0.0.1:7000"}, {"--nbd", ""}}, []exposed{{"--listen", "0.0.0.0:7000"}}
	for _, tc := range []struct {
		name            string
		tls, insecure   bool
		listeners, http []exposed
		want            string // "" for no error
	}{
		{"loopback", false, false, loop, nil, ""},
		{"wildcard", false, false, wild, nil, "--listen 0.0.0.0:7000 is not a loopback address"},
		{"wildcard NBD", false, false, []exposed{{"--nbd", "10.1.1.1:10809"}}, nil, "--nbd 10.1.1.1:10809 is not a loopback address"},
		{"wildcard with TLS", true, false, wild, nil, ""},
		{"wildcard insecure", false, true, wild, nil, ""},
		{"metrics outside loopback", false, false, loop, []exposed{{"--metrics", "0.0.0.0:9100"}}, "--metrics 0.0.0.0:9100"},
		{"pprof outside loopback", false, false, loop, []exposed{{"--pprof", ":6060"}}, "--pprof :6060"},
		{"metrics with TLS", true, false, loop, []exposed{{"--metrics", "0.0.0.0:9100"}}, ""},
		{"metrics insecure", false, true, loop, []exposed{{"--metrics", "0.0.0.0:9100"}}, ""},
		{"metrics on loopback", false, false, loop, []exposed{{"--metrics", "127.0.0.1:9100"}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkExposure("sheep", tc.tls, tc.insecure, tc.listeners, tc.http)
			switch {
			case tc.want == "" && err != nil:
				t.Fatal(err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--insecure")):
				t.Fatalf("got %v, want an error with %q and --insecure", err, tc.want)
			}
		})
	}
}

func TestCertsCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"certs", "node", "--dir", dir, "--name", "n1", "--host", "127.0.0.1"}, exitFailure, "sheepdog certs init"},
		{[]string{"certs", "init"}, exitUsage, "--dir is required"},
		{[]string{"certs", "init", "--dir", dir}, exitOK, "cluster CA"},
		{[]string{"certs", "init", "--dir", dir}, exitFailure, "refusing to overwrite"},
		{[]string{"certs", "node", "--dir", dir, "--name", "n1"}, exitUsage, "at least one --host"},
		{[]string{"certs", "node", "--dir", dir, "--name", "n1", "--host", "127.0.0.1,localhost"}, exitOK, "sheep --tls-dir"},
		{[]string{"certs", "node", "--dir", dir, "--name", "n1", "--host", "127.0.0.1"}, exitFailure, "--force"},
		{[]string{"certs", "node", "--dir", dir, "--name", "n1", "--host", "127.0.0.1", "--force"}, exitOK, "written"},
		{[]string{"certs", "client", "--dir", dir, "--name", "admin", "--days", "0"}, exitUsage, "--days"},
		{[]string{"certs", "client", "--dir", dir, "--name", "admin", "--days", "30"}, exitOK, "tls-certificates="},
		{[]string{"certs", "client", "--dir", dir, "--name", "../x"}, exitFailure, "bad name"},
		{[]string{"node", "list", "-a", "127.0.0.1:1", "--tls-dir", dir}, exitFailure, "not a client TLS directory"},
		{[]string{"sheep", "--dir", filepath.Join(dir, "d"), "--tls-dir", filepath.Join(dir, "admin")}, exitFailure, "not a node TLS directory"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errs := runIn(tc.args...)
			if code != tc.code || !strings.Contains(out+errs, tc.out) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s\nwant %q", code, tc.code, out, errs, tc.out)
			}
		})
	}
	if fi, err := os.Stat(filepath.Join(dir, "n1", "server-key.pem")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("server key: %v %v", fi, err)
	}
}
