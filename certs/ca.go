package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	"path/filepath"
	"time"
)

// Default lifetimes.
const (
	DefaultCALifetime   = 10 * 365 * 24 * time.Hour
	DefaultLeafLifetime = 365 * 24 * time.Hour
)

// backdate is how far before now certificates become valid, for clocks
// of a cluster that differ a little.
const backdate = time.Hour

// Options tune InitCA, IssueNode and IssueClient.
type Options struct {
	// Lifetime of the certificate; 0 means DefaultCALifetime for a CA,
	// DefaultLeafLifetime otherwise.
	Lifetime time.Duration
	// Force replaces existing files instead of refusing to.
	Force bool
	// Now is the issuing time; nil means time.Now.
	Now func() time.Time
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o Options) lifetime(def time.Duration) (time.Duration, error) {
	switch {
	case o.Lifetime < 0:
		return 0, fmt.Errorf("certs: negative lifetime %v", o.Lifetime)
	case o.Lifetime == 0:
		return def, nil
	}
	return o.Lifetime, nil
}

// CA is a cluster CA loaded with its key, ready to issue certificates.
type CA struct {
	Cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

// InitCA creates a new cluster CA in dir: dir/ca-cert.pem and
// dir/ca-key.pem (0600). Its name carries a random id, so that the CAs of
// two clusters are told apart in logs.
func InitCA(dir string, opt Options) (*CA, error) {
	life, err := opt.lifetime(DefaultCALifetime)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("certs: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	var id [6]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	now := opt.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"sheepdog"}, CommonName: "sheepdog cluster CA " + hex.EncodeToString(id[:])},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(life),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("certs: create CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("certs: encode CA key: %w", err)
	}
	if err := writeFiles(dir, opt.Force, []pemFile{
		{name: CACertFile, typ: "CERTIFICATE", der: der},
		{name: CAKeyFile, typ: "PRIVATE KEY", der: keyDER, secret: true},
	}); err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	return &CA{Cert: cert, der: der, key: key}, nil
}

// LoadCA reads the CA of dir (ca-cert.pem and ca-key.pem), to issue
// certificates with.
func LoadCA(dir string) (*CA, error) {
	cert, der, err := readCert(filepath.Join(dir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("%w (create a CA with: sheepdog certs init --dir %s)", err, dir)
	}
	key, err := readKey(filepath.Join(dir, CAKeyFile))
	if err != nil {
		return nil, err
	}
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, fmt.Errorf("certs: %s does not belong to %s", CAKeyFile, filepath.Join(dir, CACertFile))
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("certs: %s is not a CA certificate", filepath.Join(dir, CACertFile))
	}
	return &CA{Cert: cert, der: der, key: key}, nil
}

// newSerial is a random 128-bit serial number.
func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("certs: serial number: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}
