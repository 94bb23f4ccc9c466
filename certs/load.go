package certs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// watched is a value loaded from files, loaded again when one of them
// changed (size, modification time or inode: a rename is a new inode).
// A failed reload keeps the previous value, and is tried again at the
// next get.
type watched[T any] struct {
	paths []string
	load  func() (T, error)

	mu     sync.Mutex
	stamps []os.FileInfo // of the files val was loaded from
	val    T
	ok     bool // val was loaded
}

func newWatched[T any](load func() (T, error), paths ...string) *watched[T] {
	return &watched[T]{paths: paths, load: load}
}

// get returns the value for the files as they are now.
func (w *watched[T]) get() (T, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	stamps := make([]os.FileInfo, len(w.paths))
	same := w.ok
	for i, p := range w.paths {
		fi, err := os.Stat(p)
		if err != nil {
			if w.ok {
				return w.val, nil // gone for a moment, or for good: keep what works
			}
			var zero T
			return zero, fmt.Errorf("certs: %w", err)
		}
		stamps[i] = fi
		if same {
			old := w.stamps[i]
			same = os.SameFile(old, fi) && old.ModTime().Equal(fi.ModTime()) && old.Size() == fi.Size()
		}
	}
	if same {
		return w.val, nil
	}
	v, err := w.load()
	if err != nil {
		if w.ok {
			return w.val, nil
		}
		return v, err
	}
	w.val, w.stamps, w.ok = v, stamps, true
	return v, nil
}

// keyPair watches a certificate and its key.
func keyPair(certFile, keyFile string) *watched[*tls.Certificate] {
	return newWatched(func() (*tls.Certificate, error) {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("certs: load %s and %s: %w", certFile, keyFile, err)
		}
		return &c, nil
	}, certFile, keyFile)
}

// caPool watches the CA certificates of ca-cert.pem (one, or several
// during a CA rollover).
func caPool(file string) *watched[*x509.CertPool] {
	return newWatched(func() (*x509.CertPool, error) {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("certs: %w", err)
		}
		p := x509.NewCertPool()
		if !p.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("certs: %s holds no certificate", file)
		}
		return p, nil
	}, file)
}

// missing explains a directory that lacks what a role needs.
func missing(dir, role, issue string, err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("certs: %s is not a %s TLS directory: %w (make one with: %s)", dir, role, err, issue)
	}
	return err
}

// ServerConfig is the TLS configuration of the accepting side of a node
// whose TLS directory is dir: TLS 1.3 only, its certificate from
// server-cert.pem and server-key.pem, and every client required to show
// a certificate signed by a CA of ca-cert.pem that allows client
// authentication. The files are looked at again at every handshake.
func ServerConfig(dir string) (*tls.Config, error) {
	issue := "sheepdog certs node --dir CA_DIR --name NAME --host HOST"
	pair := keyPair(filepath.Join(dir, ServerCertFile), filepath.Join(dir, ServerKeyFile))
	cas := caPool(filepath.Join(dir, CACertFile))
	if _, err := pair.get(); err != nil {
		return nil, missing(dir, "node", issue, err)
	}
	pool, err := cas.get()
	if err != nil {
		return nil, missing(dir, "node", issue, err)
	}
	base := &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAndVerifyClientCert,
		ClientCAs:  pool,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return pair.get()
		},
	}
	// ClientCAs is a field, not a callback: a changed ca-cert.pem gets a
	// configuration of its own.
	var (
		mu      sync.Mutex
		curPool = pool
		cur     *tls.Config
	)
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		p, err := cas.get()
		if err != nil {
			return nil, err
		}
		if p == pool {
			return nil, nil // the base configuration
		}
		mu.Lock()
		defer mu.Unlock()
		if cur == nil || p != curPool {
			c := base.Clone()
			c.ClientCAs, c.GetConfigForClient = p, nil
			cur, curPool = c, p
		}
		return cur, nil
	}
	return base, nil
}

// ClientConfig is the TLS configuration of the dialing side (a node
// dialing its peers, an admin command, any client) whose TLS directory is
// dir: TLS 1.3 only, the certificate of client-cert.pem and
// client-key.pem (looked at again at every handshake), and the server
// required to show a certificate signed by a CA of ca-cert.pem as it was
// when the configuration was made, valid for the host dialed: the dialer
// sets ServerName to the host of the address (crypto/tls refuses to dial
// without it).
func ClientConfig(dir string) (*tls.Config, error) {
	issue := "sheepdog certs client --dir CA_DIR --name NAME"
	pair := keyPair(filepath.Join(dir, ClientCertFile), filepath.Join(dir, ClientKeyFile))
	if _, err := pair.get(); err != nil {
		return nil, missing(dir, "client", issue, err)
	}
	pool, err := caPool(filepath.Join(dir, CACertFile)).get()
	if err != nil {
		return nil, missing(dir, "client", issue, err)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return pair.get()
		},
	}, nil
}
