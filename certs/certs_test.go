package certs

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// newCA makes a CA in a temporary directory.
func newCA(t *testing.T) (*CA, string) {
	t.Helper()
	dir := t.TempDir()
	ca, err := InitCA(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return ca, dir
}

func TestIssue(t *testing.T) {
	ca, dir := newCA(t)
	if _, err := ca.IssueNode(dir, "n1", []string{"127.0.0.1", "::1", "localhost", "sheep1.example"}, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.IssueClient(dir, "admin", Options{Lifetime: 48 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	ls := func(d string) []string {
		es, err := os.ReadDir(d)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range es {
			names = append(names, e.Name())
		}
		return names
	}
	if diff := cmp.Diff([]string{"admin", "ca-cert.pem", "ca-key.pem", "n1"}, ls(dir)); diff != "" {
		t.Errorf("CA directory (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"ca-cert.pem", "client-cert.pem", "client-key.pem", "server-cert.pem", "server-key.pem"}, ls(filepath.Join(dir, "n1"))); diff != "" {
		t.Errorf("node directory (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"ca-cert.pem", "client-cert.pem", "client-key.pem"}, ls(filepath.Join(dir, "admin"))); diff != "" {
		t.Errorf("client directory (-want +got):\n%s", diff)
	}

	if !ca.Cert.IsCA || ca.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate: IsCA %v, key usage %b", ca.Cert.IsCA, ca.Cert.KeyUsage)
	}
	if life := ca.Cert.NotAfter.Sub(ca.Cert.NotBefore); life < DefaultCALifetime {
		t.Errorf("CA lifetime %v", life)
	}
	node, _, err := readCert(filepath.Join(dir, "n1", ServerCertFile))
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, ip := range node.IPAddresses {
		ips = append(ips, ip.String())
	}
	type names struct {
		CN         string
		IPs, DNS   []string
		ExtUsage   []x509.ExtKeyUsage
		KeyUsage   x509.KeyUsage
		IsCA       bool
		LifeInDays int
	}
	got := names{node.Subject.CommonName, ips, node.DNSNames, node.ExtKeyUsage, node.KeyUsage, node.IsCA, int(node.NotAfter.Sub(node.NotBefore).Hours() / 24)}
	want := names{"n1", []string{"127.0.0.1", "::1"}, []string{"localhost", "sheep1.example"},
		[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, false, 365}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("node certificate (-want +got):\n%s", diff)
	}
	if err := node.CheckSignatureFrom(ca.Cert); err != nil {
		t.Errorf("node certificate not signed by the CA: %v", err)
	}
	// The node's client half is the same certificate and key.
	for _, pair := range [][2]string{{ServerCertFile, ClientCertFile}, {ServerKeyFile, ClientKeyFile}} {
		a, _ := os.ReadFile(filepath.Join(dir, "n1", pair[0]))
		b, _ := os.ReadFile(filepath.Join(dir, "n1", pair[1]))
		if !bytes.Equal(a, b) {
			t.Errorf("%s and %s differ", pair[0], pair[1])
		}
	}
	client, _, err := readCert(filepath.Join(dir, "admin", ClientCertFile))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, client.ExtKeyUsage); diff != "" {
		t.Errorf("client extended key usage (-want +got):\n%s", diff)
	}
	if life := client.NotAfter.Sub(client.NotBefore); life != 48*time.Hour+backdate {
		t.Errorf("client lifetime %v", life)
	}
	// LoadCA gives back the same CA.
	ca2, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !ca2.Cert.Equal(ca.Cert) {
		t.Error("LoadCA: another certificate")
	}
}

func TestIssueErrors(t *testing.T) {
	ca, dir := newCA(t)
	for _, tc := range []struct {
		name  string
		issue func() error
		want  string
	}{
		{"node without host", func() error { _, err := ca.IssueNode(dir, "n", nil, Options{}); return err }, "at least one host"},
		{"slash in name", func() error { _, err := ca.IssueClient(dir, "a/b", Options{}); return err }, "bad name"},
		{"dot-dot name", func() error { _, err := ca.IssueClient(dir, "..", Options{}); return err }, "bad name"},
		{"empty name", func() error { _, err := ca.IssueClient(dir, "", Options{}); return err }, "bad name"},
		{"negative lifetime", func() error { _, err := ca.IssueClient(dir, "c", Options{Lifetime: -time.Hour}); return err }, "negative lifetime"},
		{"no CA", func() error { _, err := LoadCA(t.TempDir()); return err }, "sheepdog certs init"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.issue()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestModes(t *testing.T) {
	ca, dir := newCA(t)
	if _, err := ca.IssueNode(dir, "n1", []string{"127.0.0.1"}, Options{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		mode os.FileMode
	}{
		{CACertFile, 0o644},
		{CAKeyFile, 0o600},
		{"n1/" + CACertFile, 0o644},
		{"n1/" + ServerCertFile, 0o644},
		{"n1/" + ServerKeyFile, 0o600},
		{"n1/" + ClientCertFile, 0o644},
		{"n1/" + ClientKeyFile, 0o600},
	} {
		fi, err := os.Stat(filepath.Join(dir, tc.path))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != tc.mode {
			t.Errorf("%s: mode %v, want %v", tc.path, fi.Mode().Perm(), tc.mode)
		}
	}
}

func TestRefuseOverwrite(t *testing.T) {
	ca, dir := newCA(t)
	caBefore, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if _, err := InitCA(dir, Options{}); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("second InitCA: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, CAKeyFile)); !bytes.Equal(caBefore, after) {
		t.Fatal("the CA key changed")
	}
	if _, err := ca.IssueClient(dir, "c", Options{}); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, "c", ClientCertFile))
	_, err := ca.IssueClient(dir, "c", Options{})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), ClientCertFile) {
		t.Fatalf("second IssueClient: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "c", ClientCertFile)); !bytes.Equal(before, after) {
		t.Fatal("the refused issue changed the certificate")
	}
	// A node of the same name as the client: refused too, nothing written.
	if _, err := ca.IssueNode(dir, "c", []string{"127.0.0.1"}, Options{}); !errors.Is(err, ErrExists) {
		t.Fatalf("node over a client: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "c", ServerCertFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused issue wrote %s: %v", ServerCertFile, err)
	}
	if _, err := ca.IssueClient(dir, "c", Options{Force: true}); err != nil {
		t.Fatalf("with Force: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "c", ClientCertFile)); bytes.Equal(before, after) {
		t.Fatal("Force did not replace the certificate")
	}
}

// handshake runs one TLS handshake between the two configurations over
// loopback and returns both sides' errors (the server's first: with TLS
// 1.3 a client learns that its certificate was refused only when it
// reads) and the certificate the client saw.
func handshake(t *testing.T, server, client *tls.Config, host string) (seen *x509.Certificate, serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, server)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			done <- err
			return
		}
		_, err = tc.Write([]byte{1})
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cc := client.Clone()
	cc.ServerName = host
	tc := tls.Client(c, cc)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	clientErr = tc.Handshake()
	if clientErr == nil {
		var b [1]byte
		_, clientErr = tc.Read(b[:])
		if certs := tc.ConnectionState().PeerCertificates; len(certs) > 0 {
			seen = certs[0]
		}
	}
	if clientErr != nil {
		c.Close()
	}
	return seen, <-done, clientErr
}

func mustConfig(t *testing.T, f func(string) (*tls.Config, error), dir string) *tls.Config {
	t.Helper()
	c, err := f(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLoadAndHandshake(t *testing.T) {
	ca, dir := newCA(t)
	other, odir := newCA(t)
	mk := func(ca *CA, dir, name string, node bool) string {
		var d string
		var err error
		if node {
			d, err = ca.IssueNode(dir, name, []string{"127.0.0.1", "localhost"}, Options{})
		} else {
			d, err = ca.IssueClient(dir, name, Options{})
		}
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	node, peer, admin := mk(ca, dir, "n1", true), mk(ca, dir, "n2", true), mk(ca, dir, "admin", false)
	rogueNode, rogueClient := mk(other, odir, "n1", true), mk(other, odir, "admin", false)
	server := mustConfig(t, ServerConfig, node)
	if server.MinVersion != tls.VersionTLS13 || server.ClientAuth != tls.RequireAndVerifyClientCert || server.ClientCAs == nil {
		t.Fatalf("server config: %+v", server)
	}
	noCert := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: mustConfig(t, ClientConfig, admin).RootCAs}
	for _, tc := range []struct {
		name             string
		server, client   *tls.Config
		host             string
		serverErr, clErr string // substrings; "" means success
	}{
		{"peer", server, mustConfig(t, ClientConfig, peer), "127.0.0.1", "", ""},
		{"admin client", server, mustConfig(t, ClientConfig, admin), "localhost", "", ""},
		{"no client certificate", server, noCert, "127.0.0.1", "didn't provide a certificate", "certificate required"},
		{"client of another CA", server, withRoots(mustConfig(t, ClientConfig, rogueClient), server.ClientCAs), "127.0.0.1", "unknown authority", "unknown certificate authority"},
		{"server of another CA", mustConfig(t, ServerConfig, rogueNode), mustConfig(t, ClientConfig, admin), "127.0.0.1", "bad certificate", "unknown authority"},
		{"wrong host", server, mustConfig(t, ClientConfig, admin), "10.1.2.3", "bad certificate", "not 10.1.2.3"},
		{"client certificate as server", mustConfig(t, ServerConfig, node), mustConfig(t, ClientConfig, admin), "127.0.0.1", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, se, ce := handshake(t, tc.server, tc.client, tc.host)
			check := func(side string, err error, want string) {
				switch {
				case want == "" && err != nil:
					t.Errorf("%s: %v", side, err)
				case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
					t.Errorf("%s: got %v, want an error containing %q", side, err, want)
				}
			}
			check("server", se, tc.serverErr)
			check("client", ce, tc.clErr)
		})
	}
	// A client directory cannot serve, and an empty one is explained.
	if _, err := ServerConfig(admin); err == nil || !strings.Contains(err.Error(), "sheepdog certs node") {
		t.Errorf("ServerConfig of a client directory: %v", err)
	}
	if _, err := ClientConfig(t.TempDir()); err == nil || !strings.Contains(err.Error(), "sheepdog certs client") {
		t.Errorf("ClientConfig of an empty directory: %v", err)
	}
}

// withRoots trusts roots for the server's certificate: a client of
// another CA that would accept our node, to see the node refuse it.
func withRoots(c *tls.Config, roots *x509.CertPool) *tls.Config {
	c = c.Clone()
	c.RootCAs = roots
	return c
}

func TestRotation(t *testing.T) {
	ca, dir := newCA(t)
	node, err := ca.IssueNode(dir, "n1", []string{"127.0.0.1"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := ca.IssueClient(dir, "admin", Options{})
	if err != nil {
		t.Fatal(err)
	}
	server := mustConfig(t, ServerConfig, node)
	client := mustConfig(t, ClientConfig, admin)
	serial := func() string {
		t.Helper()
		seen, se, ce := handshake(t, server, client, "127.0.0.1")
		if se != nil || ce != nil {
			t.Fatalf("handshake: server %v, client %v", se, ce)
		}
		return seen.SerialNumber.String()
	}
	first := serial()
	if again := serial(); again != first {
		t.Fatalf("certificate changed without a renewal: %s then %s", first, again)
	}
	// Renewal in place: the next handshake shows the new certificate.
	if _, err := ca.IssueNode(dir, "n1", []string{"127.0.0.1"}, Options{Force: true}); err != nil {
		t.Fatal(err)
	}
	renewed, _, err := readCert(filepath.Join(node, ServerCertFile))
	if err != nil {
		t.Fatal(err)
	}
	if got := serial(); got != renewed.SerialNumber.String() || got == first {
		t.Fatalf("after renewal the server shows serial %s; renewed %s, first %s", got, renewed.SerialNumber, first)
	}
	// A broken pair (a key that does not match) keeps the last good one.
	if err := os.WriteFile(filepath.Join(node, ServerKeyFile), mustRead(t, filepath.Join(admin, ClientKeyFile)), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := serial(); got != renewed.SerialNumber.String() {
		t.Fatalf("with a mismatched key the server shows %s, want the last good %s", got, renewed.SerialNumber)
	}

	// CA rollover: a client of a new CA is refused until the node's
	// ca-cert.pem holds both CAs, then accepted without a new config.
	newer, ndir := newCA(t)
	nclient, err := newer.IssueClient(ndir, "admin", Options{})
	if err != nil {
		t.Fatal(err)
	}
	nc := mustConfig(t, ClientConfig, nclient)
	nc.RootCAs = client.RootCAs // it trusts the node already
	if _, se, _ := handshake(t, server, nc, "127.0.0.1"); se == nil || !strings.Contains(se.Error(), "unknown authority") {
		t.Fatalf("client of a new CA before the rollover: %v", se)
	}
	both := append(mustRead(t, filepath.Join(node, CACertFile)), mustRead(t, filepath.Join(ndir, CACertFile))...)
	if err := writeAtomic(filepath.Join(node, CACertFile), both, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, se, ce := handshake(t, server, nc, "127.0.0.1"); se != nil || ce != nil {
		t.Fatalf("client of a new CA after the rollover: server %v, client %v", se, ce)
	}
	if _, se, ce := handshake(t, server, client, "127.0.0.1"); se != nil || ce != nil {
		t.Fatalf("client of the old CA after the rollover: server %v, client %v", se, ce)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestEnsureLocal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	n, c, err := EnsureLocal(dir, []string{"127.0.0.1", "localhost"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	before := mustRead(t, filepath.Join(n, ServerCertFile))
	n2, c2, err := EnsureLocal(dir, []string{"127.0.0.1", "localhost"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n2 != n || c2 != c || !bytes.Equal(before, mustRead(t, filepath.Join(n, ServerCertFile))) {
		t.Fatal("a second EnsureLocal changed the certificates")
	}
	_, se, ce := handshake(t, mustConfig(t, ServerConfig, n), mustConfig(t, ClientConfig, c), "localhost")
	if se != nil || ce != nil {
		t.Fatalf("handshake: server %v, client %v", se, ce)
	}
}
