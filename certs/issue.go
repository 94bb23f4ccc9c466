package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
)

// IssueNode issues a node certificate named name, valid for hosts (IP
// addresses and DNS names, at least one: the addresses peers, admin
// clients and NBD clients reach the node at), and writes it with a copy
// of the CA certificate to dir/name. The one certificate and key go under
// both the server and the client names (see the package documentation).
// It returns the directory written.
func (ca *CA) IssueNode(dir, name string, hosts []string, opt Options) (string, error) {
	if len(hosts) == 0 {
		return "", errors.New("certs: a node certificate needs at least one host (--host): the addresses and names clients reach it at")
	}
	tmpl, err := leafTemplate(name, opt)
	if err != nil {
		return "", err
	}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if ip := net.ParseIP(strings.Trim(h, "[]")); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	return ca.issue(filepath.Join(dir, name), opt, tmpl, ServerCertFile, ServerKeyFile, ClientCertFile, ClientKeyFile)
}

// IssueClient issues a client certificate named name (an admin, a QEMU
// host, a backup job) and writes it with a copy of the CA certificate to
// dir/name. It returns the directory written.
func (ca *CA) IssueClient(dir, name string, opt Options) (string, error) {
	tmpl, err := leafTemplate(name, opt)
	if err != nil {
		return "", err
	}
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	return ca.issue(filepath.Join(dir, name), opt, tmpl, ClientCertFile, ClientKeyFile)
}

// issue signs tmpl and writes the CA certificate and the new certificate
// and key to out, under each (certificate, key) pair of names given.
func (ca *CA) issue(out string, opt Options, tmpl *x509.Certificate, names ...string) (string, error) {
	der, keyDER, err := ca.sign(tmpl)
	if err != nil {
		return "", err
	}
	files := []pemFile{{name: CACertFile, typ: "CERTIFICATE", der: ca.der}}
	for i := 0; i+1 < len(names); i += 2 {
		files = append(files,
			pemFile{name: names[i], typ: "CERTIFICATE", der: der},
			pemFile{name: names[i+1], typ: "PRIVATE KEY", der: keyDER, secret: true})
	}
	return out, writeFiles(out, opt.Force, files)
}

// leafTemplate is what node and client certificates share. Key usage
// names key encipherment as well as signatures: QEMU (GnuTLS) refuses a
// leaf whose critical key usage lacks it, whatever the key type.
func leafTemplate(name string, opt Options) (*x509.Certificate, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	life, err := opt.lifetime(DefaultLeafLifetime)
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := opt.now()
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"sheepdog"}, CommonName: name},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(life),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
	}, nil
}

// sign makes a key for tmpl and signs it with the CA; it returns the
// certificate and the PKCS #8 key, DER encoded.
func (ca *CA) sign(tmpl *x509.Certificate) (der, keyDER []byte, err error) {
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: generate key: %w", err)
	}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: sign %s: %w", tmpl.Subject.CommonName, err)
	}
	keyDER, err = x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: encode key: %w", err)
	}
	return der, keyDER, nil
}
