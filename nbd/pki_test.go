package nbd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testCA is a certificate authority made for one test, issuing the
// server and client certificates of the TLS tests. It does not depend on
// sheepdog's certs package: the nbd package only takes a *tls.Config.
type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

func newTestCA(tb testing.TB, name string) *testCA {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(tb),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"sheepdog nbd tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return &testCA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func randomSerial(tb testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// issue returns a certificate and its key in PEM: a server certificate
// for 127.0.0.1 and localhost, or a client certificate.
func (ca *testCA) issue(tb testing.TB, cn string, server bool) (certPEM, keyPEM []byte) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(tb),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"sheepdog nbd tests"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// serverConfig is the config of an NBD server with a certificate from ca
// that requires client certificates from ca.
func (ca *testCA) serverConfig(tb testing.TB) *tls.Config {
	tb.Helper()
	c, k := ca.issue(tb, "nbd-server", true)
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		tb.Fatal(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool(),
		MinVersion:   tls.VersionTLS12,
	}
}

// clientConfig is the config of a client with a certificate from ca
// (none when cn is empty) that trusts servers certified by trust.
func (ca *testCA) clientConfig(tb testing.TB, cn string, trust *testCA) *tls.Config {
	tb.Helper()
	cfg := &tls.Config{RootCAs: trust.pool(), ServerName: "127.0.0.1"}
	if cn != "" {
		c, k := ca.issue(tb, cn, false)
		pair, err := tls.X509KeyPair(c, k)
		if err != nil {
			tb.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg
}

// clientDir writes a client certificate from ca, its key and the CA
// certificates of trust in the layout of QEMU's tls-creds-x509 and
// libnbd's tls-certificates: ca-cert.pem, client-cert.pem and
// client-key.pem.
func (ca *testCA) clientDir(tb testing.TB, cn string, trust ...*testCA) string {
	tb.Helper()
	dir := tb.TempDir()
	c, k := ca.issue(tb, cn, false)
	var cas []byte
	for _, t := range trust {
		cas = append(cas, t.certPEM...)
	}
	for name, data := range map[string][]byte{
		"ca-cert.pem":     cas,
		"client-cert.pem": c,
		"client-key.pem":  k,
	} {
		mode := os.FileMode(0o644)
		if name == "client-key.pem" {
			mode = 0o600
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, mode); err != nil {
			tb.Fatal(err)
		}
	}
	return dir
}
