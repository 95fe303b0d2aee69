package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns their paths and a pool trusting it.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "carta test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// TestServeHTTPS: --tls-cert/--tls-key serve HTTPS (HTTP/2 too), every advertised URL is https, and the sign-in
// cookie is Secure.
func TestServeHTTPS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	if _, errOut, code := runCmd(t, "serve", "--tls-cert", certFile); code != 2 || !strings.Contains(errOut, "go together") {
		t.Fatalf("--tls-cert alone: %d %s", code, errOut)
	}
	if _, errOut, code := runCmd(t, "serve", "--tls-cert", keyFile, "--tls-key", keyFile, "--data", t.TempDir()); code == 0 || !strings.Contains(errOut, "--tls-cert/--tls-key") {
		t.Fatalf("a key given as the certificate: %d %s", code, errOut)
	}
	data := t.TempDir()
	t.Setenv("CARTA_DATABASE_URL", "")
	base, stop, banner := startWithBanner(t, "--data", data, "--tls-cert", certFile, "--tls-key", keyFile)
	defer stop()
	if !strings.HasPrefix(base, "https://127.0.0.1:") || !strings.Contains(banner, "HTTPS") {
		t.Fatalf("banner: %s", banner)
	}
	root := strings.TrimSuffix(base, "/fhir")
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Get(base + "/metadata")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || res.ProtoMajor != 2 || !strings.Contains(string(body), root+"/auth/token") {
		t.Fatalf("metadata over HTTPS: %d %s %.200s", res.StatusCode, res.Proto, body)
	}
	// Plain HTTP on the TLS port gets Go's 400 (or no answer): nothing is served in clear.
	if res, err := http.Get("http://" + strings.TrimPrefix(base, "https://") + "/metadata"); err == nil {
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP on the TLS port: %d", res.StatusCode)
		}
	}
	redirect := "https://app.example/callback"
	if out, errOut, code := runCmd(t, "clients", "add", "--data", data, "--id", "app", "--kind", "public", "--redirect-uri", redirect); code != 0 {
		t.Fatalf("clients add: %s %s", out, errOut)
	}
	_, challenge := pkceForTest()
	q := url.Values{"response_type": {"code"}, "client_id": {"app"}, "redirect_uri": {redirect}, "scope": {"launch/patient patient/*.rs"},
		"state": {"s"}, "aud": {base}, "code_challenge": {challenge}, "code_challenge_method": {"S256"}}
	res, err = client.Get(root + "/auth/authorize?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	ck := res.Header.Get("Set-Cookie")
	if res.StatusCode != 302 || !strings.Contains(ck, "Secure") || !strings.Contains(ck, "HttpOnly") || !strings.Contains(ck, "SameSite=Lax") {
		t.Fatalf("sign-in cookie over HTTPS: %d %q", res.StatusCode, ck)
	}
}
