package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sheepdog-go/sheepdog/certs"
	"github.com/sheepdog-go/sheepdog/daemon"
	"github.com/sheepdog-go/sheepdog/internal/freeport"
)

// End-to-end tests of TLS: real `sheepdog sheep` processes with
// certificates from `sheepdog certs`, the admin CLI, QEMU's tools and
// libnbd's over TLS, and the refusals.

// startTLSCluster starts n nodes, node i with the extra arguments
// args(i) (its --tls-dir, say), and waits until they form a cluster.
// Admin commands of the cluster's helpers get their --tls-dir from
// SHEEPDOG_TLS_DIR, which the caller sets.
func startTLSCluster(t *testing.T, n int, args func(i int) []string) *procCluster {
	t.Helper()
	c := &procCluster{t: t, bin: sheepdogBinary(t)}
	base := t.TempDir()
	extra := make([][]string, n)
	for i := 0; i < n; i++ {
		p := &sheepProc{dir: filepath.Join(base, fmt.Sprintf("n%d", i)), listen: freeport.Addr(t), nbd: freeport.Addr(t)}
		if i > 0 {
			p.join = c.nodes[0].listen
		}
		c.nodes = append(c.nodes, p)
		extra[i] = args(i)
	}
	for i := range c.nodes {
		c.startWith(i, extra[i]...)
	}
	c.killAtCleanup(t)
	c.waitMembers(n)
	return c
}

// startWith is start with extra arguments for the node.
func (c *procCluster) startWith(i int, extra ...string) {
	p := c.nodes[i]
	args := []string{"sheep", "--dir", p.dir, "--listen", p.listen, "--nbd", p.nbd, "--log-level", "info"}
	if p.join != "" {
		args = append(args, "--join", p.join)
	}
	args = append(args, extra...)
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		c.t.Fatal(err)
	}
	log, err := os.OpenFile(c.logPath(i), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	p.cmd, p.log, p.done = cmd, log, make(chan error, 1)
	go func() { p.done <- cmd.Wait() }()
}

// runCLIEnv runs the CLI with env (nil: this process's) and stdin.
func runCLIEnv(bin string, env []string, stdin io.Reader, args ...string) (string, string, error) {
	var out, errb bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Env, cmd.Stdin, cmd.Stdout, cmd.Stderr = env, stdin, &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// envWithout is this process's environment without the variables named.
func envWithout(names ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		keep := true
		for _, n := range names {
			keep = keep && !strings.HasPrefix(kv, n+"=")
		}
		if keep {
			env = append(env, kv)
		}
	}
	return env
}

func mustCLI(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := runCLI(bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// failTool runs a tool that must fail and returns its output.
func failTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err == nil {
		t.Fatalf("%s %s succeeded:\n%s", name, strings.Join(args, " "), out)
	}
	return string(out)
}

// metricValue scrapes one sample from a /metrics address.
func metricValue(t *testing.T, addr, sample string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("no %s in the metrics of %s", sample, addr)
	return 0
}

// serverSerial is the serial of the certificate the TLS listener at addr
// shows to a client of the TLS directory dir.
func serverSerial(t *testing.T, addr, dir string) string {
	t.Helper()
	cfg, err := certs.ClientConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ServerName = "127.0.0.1"
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func fileSerial(t *testing.T, path string) string {
	t.Helper()
	cfg, err := tls.LoadX509KeyPair(path, strings.Replace(path, "cert.pem", "key.pem", 1))
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Leaf.SerialNumber.String()
}

// TestE2ETLSCluster: a cluster of three nodes under mutual TLS, with
// certificates made by `sheepdog certs`, formats, creates a VDI, and the
// admin CLI, qemu-img, qemu-io, nbdinfo and nbdcopy read and write it
// over TLS. Clients without a certificate, or with one of another CA, are
// refused with a clear message and change nothing (plain NBD clients
// with "TLS required"); a node of another CA cannot join and logs why; a
// node's certificate renewed in place is served at the next handshake,
// and the node restarted with it rejoins.
func TestE2ETLSCluster(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io", "nbdinfo", "nbdcopy")
	bin := sheepdogBinary(t)
	base := t.TempDir()
	caDir, rogueDir := filepath.Join(base, "ca"), filepath.Join(base, "rogue")
	mustCLI(t, bin, "certs", "init", "--dir", caDir)
	mustCLI(t, bin, "certs", "init", "--dir", rogueDir)
	for i := 0; i < 3; i++ {
		mustCLI(t, bin, "certs", "node", "--dir", caDir, "--name", fmt.Sprintf("n%d", i), "--host", "127.0.0.1", "--host", "localhost")
	}
	mustCLI(t, bin, "certs", "client", "--dir", caDir, "--name", "admin")
	mustCLI(t, bin, "certs", "node", "--dir", rogueDir, "--name", "r", "--host", "127.0.0.1")
	mustCLI(t, bin, "certs", "client", "--dir", rogueDir, "--name", "admin")
	if _, err := runCLI(bin, "certs", "client", "--dir", caDir, "--name", "admin"); err == nil || !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Fatalf("a second certs client of the same name: %v", err)
	}
	admin := filepath.Join(caDir, "admin")
	t.Setenv("SHEEPDOG_TLS_DIR", admin) // the cluster helpers' admin commands
	metrics := freeport.Addr(t)
	nodeArgs := func(i int) []string {
		args := []string{"--tls-dir", filepath.Join(caDir, fmt.Sprintf("n%d", i))}
		if i == 0 {
			args = append(args, "--metrics", metrics)
		}
		return args
	}
	c := startTLSCluster(t, 3, nodeArgs)
	c.format(3)
	c.mustAdmin("vdi", "create", "secure", "64M")

	// The admin CLI writes and reads over TLS.
	data := make([]byte, 3<<20)
	rand.Read(data)
	if _, errs, err := runCLIEnv(c.bin, nil, bytes.NewReader(data), "vdi", "write", "secure", "1M", "-a", c.nodes[1].listen); err != nil {
		t.Fatalf("vdi write: %v: %s", err, errs)
	}
	if got := c.mustAdmin("vdi", "read", "secure", "1M", "3M"); got != string(data) {
		t.Fatal("vdi read over TLS returned other bytes than vdi write wrote")
	}

	// QEMU's tools with tls-creds-x509, libnbd's with nbds://.
	obj := "tls-creds-x509,id=tls0,dir=" + admin + ",endpoint=client"
	opts := func(i int) string {
		_, port, _ := net.SplitHostPort(c.nodes[i].nbd)
		return fmt.Sprintf("driver=nbd,host=127.0.0.1,port=%s,export=secure,tls-creds=tls0", port)
	}
	nbds := func(i int) string { return fmt.Sprintf("nbds://%s/secure?tls-certificates=%s", c.nodes[i].nbd, admin) }
	img := randomFile(t, 16<<20)
	runTool(t, 2*time.Minute, "qemu-img", "convert", "-n", "--object", obj, "-f", "raw", img, "--target-image-opts", opts(0))
	out := runTool(t, 2*time.Minute, "qemu-img", "compare", "--object", obj, "--image-opts", "driver=file,filename="+img, opts(1))
	if !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare over TLS: %s", out)
	}
	out = runTool(t, time.Minute, "qemu-io", "--object", obj, "--image-opts", opts(2),
		"-c", "write -P 0xa5 20M 2M", "-c", "flush", "-c", "read -P 0xa5 20M 2M")
	if strings.Contains(out, "fail") || strings.Count(out, "read ") < 1 {
		t.Fatalf("qemu-io over TLS:\n%s", out)
	}
	// As the README's Security section backs a VDI up.
	qcow := filepath.Join(t.TempDir(), "backup.qcow2")
	runTool(t, 2*time.Minute, "qemu-img", "convert", "--object", obj, "--image-opts", opts(1), "-O", "qcow2", qcow)
	if out := runTool(t, time.Minute, "qemu-img", "compare", "--object", obj, "--image-opts", "driver=qcow2,file.filename="+qcow, opts(0)); !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare of the qcow2 backup: %s", out)
	}
	var info struct {
		Protocol string           `json:"protocol"`
		TLS      bool             `json:"TLS"`
		Exports  []map[string]any `json:"exports"`
	}
	if err := json.Unmarshal([]byte(runTool(t, time.Minute, "nbdinfo", "--json", nbds(1))), &info); err != nil || len(info.Exports) != 1 || !info.TLS {
		t.Fatalf("nbdinfo over TLS: %v %+v", err, info)
	}
	if info.Exports[0]["export-size"] != float64(64<<20) {
		t.Errorf("nbdinfo export-size = %v", info.Exports[0]["export-size"])
	}
	small := randomFile(t, 4<<20)
	runTool(t, time.Minute, "nbdcopy", small, nbds(2)) // the whole 64M VDI gets 4 MiB of it...
	back := filepath.Join(t.TempDir(), "back")
	runTool(t, time.Minute, "nbdcopy", nbds(0), back)
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(small)
	if len(got) != 64<<20 || !bytes.Equal(got[:4<<20], want) || !bytes.Equal(got[20<<20:22<<20], bytes.Repeat([]byte{0xa5}, 2<<20)) {
		t.Fatalf("nbdcopy read back %d bytes that differ from what was written", len(got))
	}

	// Plain NBD clients are refused: TLS is required.
	if out := failTool(t, "qemu-img", "info", c.nbdURI(0, "secure")); !strings.Contains(out, "TLS") {
		t.Errorf("plain qemu-img: %s", out)
	}
	failTool(t, "nbdinfo", c.nbdURI(1, "secure"))
	// ... and a client certificate of another CA.
	failTool(t, "nbdinfo", fmt.Sprintf("nbds://%s/secure?tls-certificates=%s", c.nodes[1].nbd, filepath.Join(rogueDir, "admin")))

	// Admin commands without a certificate, or with another CA's, are
	// refused with a clear message and change nothing.
	plain := envWithout("SHEEPDOG_TLS_DIR")
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"no --tls-dir", plain, nil, "requires TLS with a client certificate from the cluster CA; pass --tls-dir"},
		{"another CA", plain, []string{"--tls-dir", filepath.Join(rogueDir, "admin")}, "not signed by the CA in ca-cert.pem"},
	} {
		for _, cmd := range [][]string{{"vdi", "create", "evil", "1G"}, {"vdi", "delete", "secure"}, {"cluster", "shutdown"}} {
			args := append(append(cmd, "-a", c.nodes[0].listen), tc.args...)
			_, errs, err := runCLIEnv(c.bin, tc.env, nil, args...)
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitFailure || !strings.Contains(errs, tc.want) {
				t.Errorf("%s: %s: %v, stderr %q; want exit 1 and %q", tc.name, strings.Join(args, " "), err, errs, tc.want)
			}
		}
	}
	var rows []daemon.VDIRow
	if err := json.Unmarshal([]byte(c.mustAdmin("vdi", "list", "--json")), &rows); err != nil || len(rows) != 1 || rows[0].Name != "secure" {
		t.Fatalf("after refused commands: vdi list %+v, %v", rows, err)
	}
	c.waitMembers(3) // and nobody shut down
	if v := metricValue(t, metrics, `sheepdog_tls_handshake_refused_total{reason="not_tls"}`); v < 3 {
		t.Errorf("node 0 counted %v plain dials, want at least 3", v)
	}

	// A node with a certificate of another CA cannot join, and says why.
	rogue := &sheepProc{dir: filepath.Join(base, "rogue-node"), listen: freeport.Addr(t), nbd: freeport.Addr(t), join: c.nodes[0].listen}
	c.nodes = append(c.nodes, rogue)
	c.startWith(3, "--tls-dir", filepath.Join(rogueDir, "r"))
	c.waitFor("the rogue node to log its refusal", 30*time.Second, func() bool {
		b, _ := os.ReadFile(c.logPath(3))
		return strings.Contains(string(b), "refused at the TLS handshake") && strings.Contains(string(b), "of another cluster")
	})
	time.Sleep(2 * time.Second)
	c.waitMembers(3)
	if v := metricValue(t, metrics, `sheepdog_tls_handshake_refused_total{reason="other"}`); v < 1 {
		t.Errorf("node 0 counted no refusal of its certificate by the rogue node")
	}
	c.kill(3, syscall.SIGKILL)
	c.nodes = c.nodes[:3]

	// Renewal: the new certificate is served at the next handshake, and
	// the node restarted with it rejoins.
	n2 := filepath.Join(caDir, "n2")
	old := serverSerial(t, c.nodes[2].listen, admin)
	mustCLI(t, bin, "certs", "node", "--dir", caDir, "--name", "n2", "--host", "127.0.0.1", "--force")
	renewed := fileSerial(t, filepath.Join(n2, certs.ServerCertFile))
	if got := serverSerial(t, c.nodes[2].listen, admin); got != renewed || got == old {
		t.Fatalf("after renewal node 2 shows serial %s; renewed %s, old %s", got, renewed, old)
	}
	before := c.epoch()
	if err := c.kill(2, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	c.startWith(2, nodeArgs(2)...)
	c.waitEpochAfter(before, 3)
	c.waitRecovered(3)
	c.checkVDI("secure", 3)
}

// TestE2ENoTLSOutsideLoopback: a node refuses to listen (peers, NBD,
// metrics, profiles) outside loopback without TLS, says why and touches
// nothing; with --insecure it starts.
func TestE2ENoTLSOutsideLoopback(t *testing.T) {
	bin := sheepdogBinary(t)
	env := envWithout("SHEEPDOG_TLS_DIR", "SHEEPDOG_INSECURE")
	port := func() string { _, p, _ := net.SplitHostPort(freeport.Addr(t)); return p }
	hosts := []string{"0.0.0.0", "[::]"}
	if ip := nonLoopbackIP(); ip != "" {
		hosts = append(hosts, ip)
	}
	type tc struct {
		name string
		args []string
		want string
	}
	var cases []tc
	for _, h := range hosts {
		a := h + ":" + port()
		cases = append(cases,
			tc{"listen " + h, []string{"sheep", "--listen", a}, "--listen " + a + " is not a loopback address"},
			tc{"nbd " + h, []string{"sheep", "--listen", freeport.Addr(t), "--nbd", a}, "--nbd " + a + " is not a loopback address"},
			tc{"metrics " + h, []string{"sheep", "--listen", freeport.Addr(t), "--metrics", a}, "--metrics " + a + " is not a loopback address"},
			tc{"pprof " + h, []string{"sheep", "--listen", freeport.Addr(t), "--pprof", a}, "--pprof " + a + " is not a loopback address"})
	}
	cases = append(cases,
		tc{"listen on every interface", []string{"sheep", "--listen", ":" + port()}, "is not a loopback address"},
		tc{"local", []string{"local", "--host", "0.0.0.0", "--port", port(), "--nbd-port", port()}, "is not a loopback address"})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "d")
			_, errs, err := runCLIEnv(bin, env, nil, append(c.args, "--dir", dir)...)
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != exitUsage || !strings.Contains(errs, c.want) || !strings.Contains(errs, "--insecure") {
				t.Fatalf("%v; stderr %q; want exit 2 and %q", err, errs, c.want)
			}
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("a refused node created %s", dir)
			}
		})
	}

	// With --insecure it starts, and warns.
	dir := t.TempDir()
	p := port()
	cmd := exec.Command(bin, "sheep", "--dir", dir, "--listen", "0.0.0.0:"+p, "--insecure")
	cmd.Env = env
	logf, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stderr = logf
	logText := func() string { b, _ := os.ReadFile(logf.Name()); return string(b) }
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, _, err := runCLIEnv(bin, env, nil, "node", "info", "-a", "127.0.0.1:"+p); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the --insecure node did not answer:\n%s", logText())
		}
		time.Sleep(200 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_ = cmd.Wait()
	if !strings.Contains(logText(), "running without TLS (--insecure)") {
		t.Errorf("no warning in the log of the --insecure node:\n%s", logText())
	}
}

// nonLoopbackIP is an address of this host outside loopback, if any.
func nonLoopbackIP() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	return ""
}

// TestE2ELocalTLS: `sheepdog local --tls` makes its certificates in the
// data directory and prints command lines for qemu-img, nbdinfo and the
// admin CLI that work as printed; started again it keeps them.
func TestE2ELocalTLS(t *testing.T) {
	needTools(t, "qemu-img", "nbdinfo")
	bin := sheepdogBinary(t)
	dir := filepath.Join(t.TempDir(), "local")
	peer, nbdPort := freeport.Run(t, 1), freeport.Run(t, 1)
	start := func() (map[string]string, func()) {
		cmd := exec.Command(bin, "local", "--tls", "--nodes", "1", "--copies", "1", "--dir", dir, "--vdi-size", "64M",
			"--port", strconv.Itoa(peer), "--nbd-port", strconv.Itoa(nbdPort))
		cmd.Env = envWithout("SHEEPDOG_TLS_DIR")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var errb bytes.Buffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		stop := func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			_ = cmd.Wait()
		}
		lines := map[string]string{}
		sc := bufio.NewScanner(stdout)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for sc.Scan() {
				if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":"); ok {
					lines[k] = strings.TrimSpace(v)
				}
				if strings.HasPrefix(strings.TrimSpace(sc.Text()), "state:") {
					return
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(90 * time.Second):
			stop()
			t.Fatalf("local --tls printed no usage within 90 s; stderr:\n%s", errb.String())
		}
		go io.Copy(io.Discard, stdout)
		return lines, stop
	}
	lines, stop := start()
	for _, k := range []string{"qemu-img", "nbdinfo", "state", "QEMU"} {
		if lines[k] == "" {
			stop()
			t.Fatalf("no %s line in the output: %v", k, lines)
		}
	}
	if !strings.Contains(lines["QEMU"], "tls-creds-x509,id=tls0,dir=") || !strings.Contains(lines["QEMU"], "tls-creds=tls0") {
		t.Errorf("QEMU line without TLS options: %s", lines["QEMU"])
	}
	sh := func(line string) string {
		t.Helper()
		out, err := exec.Command("sh", "-c", line).CombinedOutput()
		if err != nil {
			t.Errorf("%s: %v\n%s", line, err, out)
		}
		return string(out)
	}
	if out := sh(lines["qemu-img"]); !strings.Contains(out, "virtual size: 64 MiB") {
		t.Errorf("qemu-img as printed: %s", out)
	}
	if out := sh(lines["nbdinfo"]); !strings.Contains(out, "with TLS") {
		t.Errorf("nbdinfo as printed: %s", out)
	}
	state := strings.Split(lines["state"], ";")[0]
	if out := sh(strings.Replace(state, "sheepdog", bin, 1)); !regexp.MustCompile(`127\.0\.0\.1:\d+`).MatchString(out) {
		t.Errorf("node list as printed: %s", out)
	}
	key := filepath.Join(dir, "tls", "client", certs.ClientKeyFile)
	before, err := os.ReadFile(key)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(key); fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v", key, fi.Mode().Perm())
	}
	stop()
	lines, stop = start()
	defer stop()
	if after, _ := os.ReadFile(key); !bytes.Equal(before, after) {
		t.Error("a second start made new certificates")
	}
	if out := sh(lines["nbdinfo"]); !strings.Contains(out, "with TLS") {
		t.Errorf("nbdinfo after a restart: %s", out)
	}
}
