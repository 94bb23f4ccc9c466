package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// These tests drive the TLS server with real NBD clients, QEMU's (GnuTLS
// through tls-creds-x509) and libnbd's (nbds:// URIs), each with a client
// certificate directory in the layout both read. A missing tool is a test
// failure, never a skip.

// tlsToolServer serves "disk" of size bytes over TLS, requiring client
// certificates from ca.
func tlsToolServer(t *testing.T, ca *testCA, size uint64) (host, port string, vol *MemVolume, ref *refusals) {
	t.Helper()
	mb := NewMemBackend()
	vol = mb.Add("disk", size)
	mb.AttachWait = toolTimeout
	ref = &refusals{}
	addr := startServer(t, &Server{Backend: mb, TLSConfig: ca.serverConfig(t), Refused: ref.add})
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return host, port, vol, ref
}

// qemuTLS returns the QEMU arguments that open the export over TLS with
// the certificates of dir: the secret object and the image options.
func qemuTLS(dir, host, port string) (object, image string) {
	return "tls-creds-x509,id=tls0,dir=" + dir + ",endpoint=client",
		"driver=nbd,host=" + host + ",port=" + port + ",export=disk,tls-creds=tls0"
}

// runToolFail runs a tool that must fail, with env added to its
// environment, and returns its output.
func runToolFail(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	requireTool(t, name)
	ctx, cancel := context.WithTimeout(t.Context(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("%s %s succeeded:\n%s", name, strings.Join(args, " "), out)
	}
	if ctx.Err() != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), ctx.Err(), out)
	}
	return string(out)
}

// TestTLSQemuImg: qemu-img info and convert (into the export and back out)
// over TLS with a client certificate from the cluster CA.
func TestTLSQemuImg(t *testing.T) {
	const size = 8 << 20
	ca := newTestCA(t, "cluster CA")
	host, port, vol, ref := tlsToolServer(t, ca, size)
	dir := ca.clientDir(t, "qemu", ca)
	obj, image := qemuTLS(dir, host, port)

	out := runTool(t, "qemu-img", "info", "--output=json", "--object", obj, "--image-opts", image)
	var info struct {
		Size   int64  `json:"virtual-size"`
		Format string `json:"format"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("parsing qemu-img info: %v\n%s", err, out)
	}
	if info.Size != int64(size) {
		t.Errorf("qemu-img info: virtual size %d, want %d\n%s", info.Size, size, out)
	}

	img := randomImage(3, size)
	src := writeFile(t, "src.raw", img)
	runTool(t, "qemu-img", "convert", "-n", "--object", obj, "-f", "raw", "--target-image-opts", src, image)
	equalBytes(t, "volume after qemu-img convert over TLS", img, volumeBytes(t, vol))

	dst := filepath.Join(t.TempDir(), "dst.raw")
	runTool(t, "qemu-img", "convert", "--object", obj, "--image-opts", image, "-O", "raw", dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	equalBytes(t, "file after qemu-img convert out over TLS", img, got)
	ref.waitFor(t)
}

// TestTLSQemuIo: qemu-io writes and verifies patterns over TLS.
func TestTLSQemuIo(t *testing.T) {
	const size = 4 << 20
	ca := newTestCA(t, "cluster CA")
	host, port, vol, _ := tlsToolServer(t, ca, size)
	obj, image := qemuTLS(ca.clientDir(t, "qemu", ca), host, port)
	args := []string{"--object", obj, "--image-opts", image}
	for _, c := range []string{
		"write -P 0x5a 0 1M",
		"write -f -P 0xa5 1M 64k",
		"write -z 2M 1M",
		"aio_write -P 0x33 3M 512k",
		"aio_flush",
		"read -P 0x5a 0 1M",
		"read -P 0xa5 1M 64k",
		"read -P 0 2M 1M",
		"read -P 0x33 3M 512k",
		"flush",
	} {
		args = append(args, "-c", c)
	}
	out := runTool(t, "qemu-io", args...)
	for _, bad := range []string{"Pattern verification failed", "failed", "error", "Error"} {
		if strings.Contains(out, bad) {
			t.Fatalf("qemu-io output contains %q:\n%s", bad, out)
		}
	}
	want := make([]byte, size)
	copy(want, bytes.Repeat([]byte{0x5a}, 1<<20))
	copy(want[1<<20:], bytes.Repeat([]byte{0xa5}, 64<<10))
	copy(want[3<<20:], bytes.Repeat([]byte{0x33}, 512<<10))
	equalBytes(t, "volume after qemu-io over TLS", want, volumeBytes(t, vol))
}

// TestTLSQemuOtherCA: QEMU with a client certificate from another CA is
// refused at the TLS handshake and changes nothing.
func TestTLSQemuOtherCA(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	other := newTestCA(t, "another CA")
	host, port, vol, ref := tlsToolServer(t, ca, 1<<20)
	// The client trusts the server's CA but holds a certificate of
	// another one (QEMU checks its own certificate against ca-cert.pem
	// first, so that holds both CAs).
	obj, image := qemuTLS(other.clientDir(t, "mallory", ca, other), host, port)
	out := runToolFail(t, nil, "qemu-io", "--object", obj, "--image-opts", image, "-c", "write -P 0x66 0 4k")
	t.Logf("qemu-io: %s", out)
	equalBytes(t, "volume after a refused client", make([]byte, 1<<20), volumeBytes(t, vol))
	ref.waitFor(t, "tls-handshake")
}

// TestTLSNbdinfo: nbdinfo over nbds:// with the certificate directory
// reports TLS; a plain nbd:// client is refused with "TLS required", and
// one with a certificate from another CA at the handshake.
func TestTLSNbdinfo(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	host, port, _, ref := tlsToolServer(t, ca, 16<<20)
	dir := ca.clientDir(t, "libnbd", ca)
	base := "nbds://" + net.JoinHostPort(host, port)

	var got nbdinfoOutput
	out := runTool(t, "nbdinfo", "--json", base+"/disk?tls-certificates="+dir)
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("parsing nbdinfo --json: %v\n%s", err, out)
	}
	want := nbdinfoOutput{Protocol: "newstyle-fixed", TLS: true, Structured: true, Exports: []nbdinfoExport{{
		Name: "disk", Size: 16 << 20, Contexts: []string{metaContextBaseAllocation},
		CanDF: true, CanFastZero: true, CanFlush: true, CanFUA: true, CanTrim: true, CanZero: true,
		BlockMin: 1, BlockPref: 4096, BlockMax: DefaultMaxPayload,
	}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("nbdinfo --json over TLS (-want +got):\n%s", diff)
	}
	out = runTool(t, "nbdinfo", "--list", "--json", base+"/?tls-certificates="+dir)
	if !strings.Contains(out, `"export-name": "disk"`) {
		t.Errorf("nbdinfo --list over TLS:\n%s", out)
	}
	ref.waitFor(t)

	other := newTestCA(t, "another CA")
	out = runToolFail(t, nil, "nbdinfo", base+"/disk?tls-certificates="+other.clientDir(t, "mallory", ca, other))
	if !strings.Contains(out, "TLS") {
		t.Errorf("nbdinfo with another CA's certificate says:\n%s", out)
	}
	ref.waitFor(t, "tls-handshake")
}

// TestTLSPlainClientsRefused: clients without TLS are refused with the
// server's "TLS required" (QEMU shows it; libnbd shows its own
// "Operation not supported" and the server's message in its debug log).
func TestTLSPlainClientsRefused(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	host, port, vol, ref := tlsToolServer(t, ca, 1<<20)
	uri := "nbd://" + net.JoinHostPort(host, port) + "/disk"
	for _, tc := range []struct {
		env  []string
		args []string
		want []string
	}{
		{nil, []string{"qemu-img", "info", uri},
			[]string{"TLS negotiation required", "server reported: TLS required"}},
		{nil, []string{"qemu-io", "-f", "raw", "-c", "write -P 0x66 0 4k", uri},
			[]string{"server reported: TLS required"}},
		{[]string{"LIBNBD_DEBUG=1"}, []string{"nbdinfo", uri},
			[]string{"server error message: TLS required", "without TLS"}},
		{nil, []string{"nbdcopy", uri, "null:"}, []string{"Operation not supported"}},
	} {
		out := runToolFail(t, tc.env, tc.args[0], tc.args[1:]...)
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s output lacks %q:\n%s", strings.Join(tc.args, " "), w, out)
			}
		}
	}
	equalBytes(t, "volume after refused clients", make([]byte, 1<<20), volumeBytes(t, vol))
	ref.waitFor(t, "tls-required", "tls-required", "tls-required", "tls-required")
}

// TestTLSNbdcopy copies an image into the export and back out over TLS.
func TestTLSNbdcopy(t *testing.T) {
	const size = 8 << 20
	ca := newTestCA(t, "cluster CA")
	host, port, vol, _ := tlsToolServer(t, ca, size)
	uri := "nbds://" + net.JoinHostPort(host, port) + "/disk?tls-certificates=" + ca.clientDir(t, "libnbd", ca)
	img := randomImage(4, size)
	src := writeFile(t, "src.raw", img)
	dst := filepath.Join(t.TempDir(), "dst.raw")

	runTool(t, "nbdcopy", src, uri)
	equalBytes(t, "volume after nbdcopy in over TLS", img, volumeBytes(t, vol))
	runTool(t, "nbdcopy", uri, dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	equalBytes(t, "file after nbdcopy out over TLS", img, got)
}
