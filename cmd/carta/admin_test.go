package main

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestOperatorCommands: carta clients, users and launch against a running server on the same data. Bad
// arguments are refused with a reason and change nothing; what is added is usable at once, without a restart;
// disabling a user or removing a client ends the grants they had.
func TestOperatorCommands(t *testing.T) {
	data := t.TempDir()
	t.Setenv("CARTA_DATABASE_URL", "")
	t.Setenv("CARTA_REDIS_URL", "")
	base, stop := startInProcess(t, "--data", data)
	defer stop()
	root := strings.TrimSuffix(base, "/fhir")
	sys, _, _ := runCmd(t, "token", "--data", data, "--system", "--scope", "system/*.cruds")
	for _, r := range []struct{ path, body string }{
		{"/Patient/p1", `{"resourceType":"Patient","id":"p1","name":[{"family":"One"}]}`},
		{"/Practitioner/d1", `{"resourceType":"Practitioner","id":"d1"}`},
	} {
		if s, body := send(t, "PUT", base+r.path, sys, r.body); s != 201 {
			t.Fatalf("PUT %s: %d %s", r.path, s, body)
		}
	}
	d := []string{"--data", data}
	privateJWKS := filepath.Join(t.TempDir(), "private.json")
	os.WriteFile(privateJWKS, []byte(`{"keys":[{"kty":"EC","crv":"P-384","x":"iP1kY8zvZQnJhVXHBHDQRnGhZz6oVBWQW9Lr_jyMFpvvpcDnT1RcmklGqJX1JkmO","y":"1S2ExhBaKwJ4vSFoJQ1Ly52o32Xzi-zQTSvXMOiQLlGGCM5Yb9XDAIubBIqTBmtr","d":"Vmw5rXmU_FSl6wxRlOyw5ALb2TYMc2GYV9S3X6vs2Lz9LKyEgnBwr-2Ae4AqVhTY"}]}`), 0o600)
	refused := []struct {
		name string
		args []string
		want string
	}{
		{"NoID", []string{"clients", "add", "--kind", "public", "--redirect-uri", "https://a.example/cb"}, "--id is required"},
		{"BadKind", []string{"clients", "add", "--id", "x", "--kind", "trusted", "--redirect-uri", "https://a.example/cb"}, "--kind must be"},
		{"PublicWithoutRedirect", []string{"clients", "add", "--id", "x", "--kind", "public"}, "at least one --redirect-uri"},
		{"PublicWithSecret", []string{"clients", "add", "--id", "x", "--kind", "public", "--redirect-uri", "https://a.example/cb", "--secret", "0123456789abcdefg"}, "no secret"},
		{"PlainHTTPRedirect", []string{"clients", "add", "--id", "x", "--kind", "public", "--redirect-uri", "http://a.example/cb"}, "https URL"},
		{"RedirectWithFragment", []string{"clients", "add", "--id", "x", "--kind", "public", "--redirect-uri", "https://a.example/cb#x"}, "without a fragment"},
		{"ShortSecret", []string{"clients", "add", "--id", "x", "--kind", "confidential", "--redirect-uri", "https://a.example/cb", "--secret", "short"}, "at least 16"},
		{"BackendWithoutKeys", []string{"clients", "add", "--id", "x", "--kind", "backend", "--scope", "system/*.rs"}, "--jwks or --jwks-url"},
		{"BackendPatientScope", []string{"clients", "add", "--id", "x", "--kind", "backend", "--scope", "patient/*.rs", "--jwks-url", "https://a.example/jwks"}, "system/ scopes"},
		{"PrivateKeyInJWKS", []string{"clients", "add", "--id", "x", "--kind", "backend", "--scope", "system/*.rs", "--jwks", privateJWKS}, "private"},
		{"UserWithoutIdentity", []string{"users", "add", "--username", "u", "--password", "long enough pw"}, "exactly one of"},
		{"UserTwoIdentities", []string{"users", "add", "--username", "u", "--password", "long enough pw", "--patient", "p1", "--practitioner", "d1"}, "exactly one of"},
		{"UserUnknownPatient", []string{"users", "add", "--username", "u", "--password", "long enough pw", "--patient", "nobody"}, "must exist"},
		{"ShortPassword", []string{"users", "add", "--username", "u", "--password", "short", "--patient", "p1"}, "at least 8"},
		{"PasswdUnknownUser", []string{"users", "passwd", "--username", "nobody", "--password", "long enough pw"}, "no user"},
		{"RemoveUnknownClient", []string{"clients", "remove", "--id", "nobody"}, "no client"},
		{"LaunchUnknownClient", []string{"launch", "--client", "nobody", "--patient", "p1"}, "nobody"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			n := 2 // the command and its subcommand, then the flags
			if tc.args[0] == "launch" {
				n = 1
			}
			out, errOut, code := runCmd(t, append(tc.args[:n:n], append(d, tc.args[n:]...)...)...)
			if code == 0 || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want a failure saying %q", code, out, errOut, tc.want)
			}
		})
	}
	if out, _, _ := runCmd(t, "clients", "list", "--data", data); strings.Contains(out, "\nx ") {
		t.Fatalf("a refused client was saved:\n%s", out)
	}

	// A confidential client with its secret from standard input; another with a generated one. Each secret
	// works at the introspection endpoint (client authentication) at once, and a wrong one does not.
	if out, errOut, code := runCmdIn(t, "0123456789abcdefXYZ\n", "clients", "add", "--data", data, "--id", "conf", "--kind", "confidential",
		"--redirect-uri", "https://conf.example/cb", "--secret", "-"); code != 0 || strings.Contains(out, "0123456789abcdefXYZ") {
		t.Fatalf("confidential client from stdin: %d %q %s", code, out, errOut)
	}
	out, errOut, code := runCmd(t, "clients", "add", "--data", data, "--id", "gen", "--kind", "confidential", "--redirect-uri", "https://gen.example/cb")
	m := regexp.MustCompile(`client secret \(shown once; only its hash is kept\): (\S+)`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("generated secret: %d %q %s", code, out, errOut)
	}
	for _, c := range []struct {
		id, secret string
		want       int
	}{{"conf", "0123456789abcdefXYZ", 200}, {"gen", m[1], 200}, {"conf", "0123456789abcdefXYz", 401}} {
		req, _ := http.NewRequest("POST", root+"/auth/introspect", strings.NewReader("token=not-a-token"))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(c.id, c.secret)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != c.want {
			t.Errorf("introspect as %s with secret %q: %d, want %d", c.id, c.secret, res.StatusCode, c.want)
		}
	}

	// A user added with the password on standard input signs in at once; a duplicate username is refused.
	redirect := "http://127.0.0.1:9/callback"
	if _, errOut, code := runCmd(t, "clients", "add", "--data", data, "--id", "app", "--kind", "public", "--redirect-uri", redirect); code != 0 {
		t.Fatal(errOut)
	}
	if out, errOut, code := runCmdIn(t, "a password from stdin\n", "users", "add", "--data", data, "--username", "pat", "--password", "-", "--patient", "p1"); code != 0 {
		t.Fatalf("users add: %s %s", out, errOut)
	}
	if _, errOut, code := runCmd(t, "users", "add", "--data", data, "--username", "pat", "--password", "another password", "--patient", "p1"); code == 0 || !strings.Contains(errOut, "exists already") {
		t.Fatalf("duplicate user: %d %s", code, errOut)
	}
	grant := func(client, user, password string) (access, refresh string) {
		t.Helper()
		verifier, challenge := pkceForTest()
		c := scriptedLogin(t, []string{root}, base, client, redirect, user, password, "launch/patient offline_access patient/*.rs", challenge)
		s, tok := postForm(t, root+"/auth/token", url.Values{"grant_type": {"authorization_code"}, "code": {c}, "code_verifier": {verifier}, "redirect_uri": {redirect}, "client_id": {client}})
		if s != 200 {
			t.Fatalf("token: %d %v", s, tok)
		}
		return tok["access_token"].(string), tok["refresh_token"].(string)
	}
	at, rt := grant("app", "pat", "a password from stdin")
	if s, _ := get(t, base+"/Patient/p1", at); s != 200 {
		t.Fatalf("read with the new user's token: %d", s)
	}
	// passwd: the old password stops working, the new one works.
	if _, errOut, code := runCmdIn(t, "a brand new password\n", "users", "passwd", "--data", data, "--username", "pat", "--password", "-"); code != 0 {
		t.Fatal(errOut)
	}
	if s, out := postForm(t, root+"/auth/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}); s != 200 {
		t.Fatalf("a password change leaves the app's grant alone: %d %v", s, out)
	} else {
		at, rt = out["access_token"].(string), out["refresh_token"].(string)
	}
	// disable: every grant of the user ends; the access token is refused once servers reload revocations
	// (every two seconds without Redis) and the refresh token at once.
	out, errOut, code = runCmd(t, "users", "disable", "--data", data, "--username", "pat")
	if code != 0 || !strings.Contains(out, "1 grant ended") {
		t.Fatalf("disable: %d %q %s", code, out, errOut)
	}
	if s, out := postForm(t, root+"/auth/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}); s != 400 || out["error"] != "invalid_grant" {
		t.Errorf("refresh after disable: %d %v", s, out)
	}
	refusedWithin(t, 4*time.Second, base+"/Patient/p1", at, "the disabled user's access token")
	if out, _, _ := runCmd(t, "users", "list", "--data", data); !regexp.MustCompile(`pat\s+Patient/p1\s+disabled`).MatchString(out) {
		t.Errorf("users list:\n%s", out)
	}

	// clients remove ends the client's grants.
	if _, errOut, code := runCmd(t, "users", "add", "--data", data, "--username", "pat2", "--password", "pat2's password", "--patient", "p1"); code != 0 {
		t.Fatal(errOut)
	}
	at, rt = grant("app", "pat2", "pat2's password")
	if out, errOut, code := runCmd(t, "launch", "--data", data, "--client", "app", "--patient", "p1"); code != 0 || !strings.Contains(out, "launch=") || !strings.Contains(out, "iss="+url.QueryEscape(base)) {
		t.Errorf("launch for a client without a launch URI: %d %q %s", code, out, errOut)
	}
	if _, errOut, code := runCmd(t, "launch", "--data", data, "--client", "app", "--patient", "nobody"); code == 0 || !strings.Contains(errOut, "nobody") {
		t.Errorf("launch for an unknown patient: %d %s", code, errOut)
	}
	out, errOut, code = runCmd(t, "clients", "remove", "--data", data, "--id", "app")
	if code != 0 || !strings.Contains(out, "client app removed; 1 grant ended") {
		t.Fatalf("remove: %d %q %s", code, out, errOut)
	}
	if s, out := postForm(t, root+"/auth/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}}); s != 400 || out["error"] != "invalid_grant" {
		t.Errorf("refresh after the client was removed: %d %v", s, out)
	}
	refusedWithin(t, 4*time.Second, base+"/Patient/p1", at, "the removed client's access token")
	var list []string
	out, _, _ = runCmd(t, "clients", "list", "--data", data)
	for _, line := range strings.Split(out, "\n")[1:] {
		list = append(list, strings.Fields(line)[0])
	}
	if b, _ := json.Marshal(list); string(b) != `["conf","gen"]` {
		t.Errorf("clients left: %s", b)
	}
}
