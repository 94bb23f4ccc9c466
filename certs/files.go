package certs

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// File names of the layout QEMU's tls-creds-x509 and libnbd read.
const (
	CACertFile     = "ca-cert.pem"
	CAKeyFile      = "ca-key.pem"
	ServerCertFile = "server-cert.pem"
	ServerKeyFile  = "server-key.pem"
	ClientCertFile = "client-cert.pem"
	ClientKeyFile  = "client-key.pem"
)

// ErrExists is returned when a file would be overwritten without
// Options.Force.
var ErrExists = errors.New("certs: refusing to overwrite existing files")

// pemFile is one file to write: its name, PEM block type, contents and
// whether it holds a secret.
type pemFile struct {
	name   string
	typ    string
	der    []byte
	secret bool
}

// writeFiles writes files into dir, all or none: if any exists and force
// is not set, nothing is written. Each file is written to a temporary
// name and renamed into place; keys get mode 0600, certificates 0644.
// Keys come first, so that a reader that catches the moment between two
// renames sees a new key with its old certificate, which fails to load,
// and keeps the pair it had.
func writeFiles(dir string, force bool, files []pemFile) error {
	if !force {
		var there []string
		for _, f := range files {
			p := filepath.Join(dir, f.name)
			if _, err := os.Lstat(p); err == nil {
				there = append(there, p)
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("certs: %w", err)
			}
		}
		if len(there) > 0 {
			return fmt.Errorf("%w: %s (pass --force to replace them)", ErrExists, strings.Join(there, ", "))
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	order := make([]pemFile, 0, len(files))
	for _, f := range files {
		if f.secret {
			order = append(order, f)
		}
	}
	for _, f := range files {
		if !f.secret {
			order = append(order, f)
		}
	}
	for _, f := range order {
		mode := os.FileMode(0o644)
		if f.secret {
			mode = 0o600
		}
		if err := writeAtomic(filepath.Join(dir, f.name), pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), mode); err != nil {
			return err
		}
	}
	return nil
}

// writeAtomic writes b to path through a temporary file in the same
// directory, synced, then renamed over path.
func writeAtomic(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	name := tmp.Name()
	fail := func(err error) error {
		tmp.Close()
		os.Remove(name)
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	// CreateTemp makes the file 0600; a certificate is public.
	if err := tmp.Chmod(mode); err != nil {
		return fail(err)
	}
	if _, err := tmp.Write(b); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(name, path); err != nil {
		os.Remove(name)
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	return nil
}

// readCert reads the first certificate of a PEM file.
func readCert(path string) (*x509.Certificate, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: %w", err)
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, nil, fmt.Errorf("certs: %s holds no certificate", path)
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("certs: %s: %w", path, err)
		}
		return c, blk.Bytes, nil
	}
}

// readKey reads an ECDSA private key (PKCS #8 or SEC 1) from a PEM file.
func readKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("certs: %s holds no PEM block", path)
	}
	switch blk.Type {
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certs: %s: %w", path, err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("certs: %s holds a %T key, not ECDSA", path, k)
		}
		return ek, nil
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certs: %s: %w", path, err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("certs: %s holds a %q block, not a private key", path, blk.Type)
}

// checkName checks that a certificate name is one plain path element.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) || strings.ContainsRune(name, 0) {
		return fmt.Errorf("certs: bad name %q: it names a directory under the CA directory (letters, digits, '-', '.', no '/')", name)
	}
	return nil
}
