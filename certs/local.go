package certs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Names of the directories EnsureLocal makes under its CA directory.
const (
	LocalNodeName   = "node"
	LocalClientName = "client"
)

// EnsureLocal makes what a cluster on one machine needs (sheepdog local
// --tls) in dir, keeping whatever is already there: the CA, one node
// certificate for hosts in dir/node, which every node of the cluster
// uses, and a client certificate in dir/client for the admin commands,
// QEMU and the NBD tools. It returns the node and client directories.
func EnsureLocal(dir string, hosts []string, opt Options) (nodeDir, clientDir string, err error) {
	var ca *CA
	if _, err := os.Stat(filepath.Join(dir, CACertFile)); errors.Is(err, os.ErrNotExist) {
		if ca, err = InitCA(dir, opt); err != nil {
			return "", "", err
		}
	} else if ca, err = LoadCA(dir); err != nil {
		return "", "", err
	}
	nodeDir, clientDir = filepath.Join(dir, LocalNodeName), filepath.Join(dir, LocalClientName)
	if !exists(filepath.Join(nodeDir, ServerCertFile)) {
		if _, err := ca.IssueNode(dir, LocalNodeName, hosts, opt); err != nil {
			return "", "", fmt.Errorf("node certificate: %w", err)
		}
	}
	if !exists(filepath.Join(clientDir, ClientCertFile)) {
		if _, err := ca.IssueClient(dir, LocalClientName, opt); err != nil {
			return "", "", fmt.Errorf("client certificate: %w", err)
		}
	}
	return nodeDir, clientDir, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
