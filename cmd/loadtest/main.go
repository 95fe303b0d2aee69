// Command loadtest measures Carta over HTTP the way docs/benchmarks.md reports it: a server holding 100,000
// Patients plus the Synthea sample data, pinned to one core, loaded by wrk pinned to the other core, for an
// authenticated read, a search that finds about ten Patients, and a create; then the same read load against a
// bare gin handler returning the same bytes (the ceiling), and the server's memory.
//
// Usage: go run ./cmd/loadtest [-carta bin/carta] [-patients 100000] [-duration 10s] [-conns 10]
//
//	[-database-url postgres://...] [-data DIR] [-synthea DIR]
//
// It needs wrk (Debian package wrk) and taskset (util-linux); `make bench` installs wrk when it is missing.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "bare" {
		bare(os.Args[2], os.Args[3])
		return
	}
	carta := flag.String("carta", "bin/carta", "the carta binary")
	patients := flag.Int("patients", 100000, "Patients to load")
	duration := flag.Duration("duration", 10*time.Second, "length of each load run")
	conns := flag.Int("conns", 10, "concurrent connections")
	dbURL := flag.String("database-url", "", "run on this PostgreSQL database instead of SQLite")
	data := flag.String("data", "", "data directory to use (default: a new temporary one)")
	synthea := flag.String("synthea", "", "Synthea bundles to load (default: ../shared/data/synthea or testdata/synthea)")
	cpuProfile := flag.String("cpuprofile", "", "write the server's CPU profile to this file (go tool pprof bin/carta FILE)")
	flag.Parse()
	if err := run(*carta, *patients, *duration, *conns, *dbURL, *data, *synthea, *cpuProfile); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

func run(carta string, patients int, duration time.Duration, conns int, dbURL, data, synthea, cpuProfile string) error {
	for _, tool := range []string{"wrk", "taskset"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s is needed (apt-get install wrk util-linux)", tool)
		}
	}
	if runtime.NumCPU() < 2 {
		return fmt.Errorf("needs two cores: one for the server, one for the load generator")
	}
	abs, err := filepath.Abs(carta)
	if err != nil {
		return err
	}
	carta = abs
	if data == "" {
		data, err = os.MkdirTemp("", "carta-load-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(data)
	}
	if synthea == "" {
		synthea = "../shared/data/synthea"
		if _, err := os.Stat(synthea); err != nil {
			synthea = "testdata/synthea"
		}
	}
	env := append(os.Environ(), "CARTA_DATABASE_URL="+dbURL, "GOMAXPROCS=1")
	addr := freeAddr()
	base := "http://" + addr + "/fhir"
	serverLog, err := os.Create(filepath.Join(data, "server.log"))
	if err != nil {
		return err
	}
	defer serverLog.Close()
	srv := exec.Command("taskset", "-c", "0", carta, "serve", "--data", data, "--addr", addr)
	srv.Env, srv.Stdout, srv.Stderr = env, serverLog, serverLog
	if cpuProfile != "" {
		if cpuProfile, err = filepath.Abs(cpuProfile); err != nil {
			return err
		}
		srv.Env = append(append([]string{}, env...), "CARTA_CPUPROFILE="+cpuProfile)
	}
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { srv.Process.Signal(os.Interrupt); srv.Wait() }()
	if err := waitReady("http://" + addr + "/readyz"); err != nil {
		return err
	}

	fmt.Fprintf(os.Stderr, "loading %d Patients and %s ...\n", patients, synthea)
	files, err := writePatients(data, patients)
	if err != nil {
		return err
	}
	start := time.Now()
	imp := exec.Command(carta, append([]string{"import", "--data", data, synthea}, files...)...)
	imp.Env, imp.Stdout, imp.Stderr = env, os.Stderr, os.Stderr
	if err := imp.Run(); err != nil {
		return fmt.Errorf("import: %w", err)
	}
	loadTime := time.Since(start)
	tokCmd := exec.Command(carta, "token", "--data", data, "--system", "--scope", "system/*.cruds")
	tokCmd.Env = env
	tokOut, err := tokCmd.Output()
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	tok := strings.TrimSpace(string(tokOut))
	ptokCmd := exec.Command(carta, "token", "--data", data, "--patient", "bench-000042", "--scope", "patient/*.rs")
	ptokCmd.Env = env
	ptokOut, err := ptokCmd.Output()
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	ptok := strings.TrimSpace(string(ptokOut))

	scripts := map[string]string{
		"read": fmt.Sprintf(`request = function()
  return wrk.format("GET", string.format("/fhir/Patient/bench-%%06d", math.random(0, %d)))
end`, patients-1),
		"search": fmt.Sprintf(`request = function()
  return wrk.format("GET", string.format("/fhir/Patient?family=Fam%%05d", math.random(0, %d)))
end`, patients/10-1),
		"create": `counter = 0
request = function()
  counter = counter + 1
  local body = '{"resourceType":"Patient","identifier":[{"system":"urn:load","value":"' .. counter .. '-' .. math.random(1, 1000000000) .. '"}],"name":[{"family":"Load","given":["Test"]}],"gender":"female","birthDate":"1980-01-01"}'
  local h = {}
  for k, v in pairs(wrk.headers) do h[k] = v end
  h["Content-Type"] = "application/fhir+json"
  return wrk.format("POST", "/fhir/Patient", h, body)
end`,
		"patientread": `request = function()
  return wrk.format("GET", "/fhir/Patient/bench-000042")
end`,
	}
	for name, s := range scripts {
		if err := os.WriteFile(filepath.Join(data, name+".lua"), []byte(s), 0o644); err != nil {
			return err
		}
	}
	results := map[string]wrkResult{}
	// "coldread" runs first, right after the import emptied the server's cache; "read" runs again once the
	// records have been read (steady state).
	for _, name := range []string{"coldread", "read", "patientread", "search", "create"} {
		t := tok
		if name == "patientread" {
			t = ptok
		}
		script := name
		if name == "coldread" {
			script = "read"
		}
		fmt.Fprintf(os.Stderr, "running %s ...\n", name)
		r, err := runWrk(filepath.Join(data, script+".lua"), "http://"+addr, t, duration, conns)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		results[name] = r
	}
	rss, hwm := memory(srv.Process.Pid)
	if pid := childPid(srv.Process.Pid); pid != 0 {
		rss, hwm = memory(pid)
	}

	// The audit trail the runs left: the first AuditEvent search takes the patient's entries from the read journal; the
	// patient's list again, then a staff search of everything (converting for at most 2 s).
	auditTimes := make([]time.Duration, 3)
	for i, q := range []struct{ url, tok string }{
		{base + "/AuditEvent?patient=bench-000042&_count=1", ptok},
		{base + "/AuditEvent?patient=bench-000042&_count=1", ptok},
		{base + "/AuditEvent?_count=1", tok},
	} {
		start := time.Now()
		if _, err := fetch(q.url, q.tok); err != nil {
			return fmt.Errorf("audit search: %w", err)
		}
		auditTimes[i] = time.Since(start)
	}

	// The ceiling: a bare gin handler returning one Patient's bytes.
	body, err := fetch(base+"/Patient/bench-000042", tok)
	if err != nil {
		return err
	}
	bodyFile := filepath.Join(data, "body.json")
	if err := os.WriteFile(bodyFile, body, 0o644); err != nil {
		return err
	}
	self, _ := os.Executable()
	bareAddr := freeAddr()
	bareCmd := exec.Command("taskset", "-c", "0", self, "bare", bareAddr, bodyFile)
	bareCmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	if err := bareCmd.Start(); err != nil {
		return err
	}
	defer func() { bareCmd.Process.Kill(); bareCmd.Wait() }()
	if err := waitReady("http://" + bareAddr + "/fhir/Patient/x"); err != nil {
		return err
	}
	ceiling, err := runWrk(filepath.Join(data, "read.lua"), "http://"+bareAddr, tok, duration, conns)
	if err != nil {
		return err
	}

	backend := "SQLite"
	if dbURL != "" {
		backend = "PostgreSQL"
	}
	fmt.Printf("\n%s, %d Patients + Synthea (loaded in %s), %d connections, %s per run, server on core 0 (GOMAXPROCS=1), wrk on core 1\n\n",
		backend, patients, loadTime.Round(time.Second), conns, duration)
	fmt.Println("| load | req/s | p50 | p99 |")
	fmt.Println("|---|---:|---:|---:|")
	row := func(name string, r wrkResult) {
		fmt.Printf("| %s | %.0f | %s | %s |\n", name, r.rps, r.p50, r.p99)
	}
	row("GET /fhir/Patient/{id}, random of all, first pass after loading (cold)", results["coldread"])
	row("GET /fhir/Patient/{id}, random of all, second pass (steady state)", results["read"])
	row("GET /fhir/Patient/{id} (patient token, own record)", results["patientread"])
	row("GET /fhir/Patient?family=X (10 matches)", results["search"])
	row("POST /fhir/Patient", results["create"])
	row("bare gin handler, same bytes (ceiling)", ceiling)
	fmt.Printf("\nread / ceiling: %.0f%%   server RSS after the runs: %d MB (peak %d MB)\n",
		100*results["read"].rps/ceiling.rps, rss/1024, hwm/1024)
	fmt.Printf("audit after the runs: a patient's first AuditEvent search %s (takes its entries from the read journal), the next %s; a staff search of all %s (converts for up to 2 s, then warns of the rest)\n",
		auditTimes[0].Round(time.Millisecond), auditTimes[1].Round(time.Millisecond), auditTimes[2].Round(time.Millisecond))
	return nil
}

// writePatients writes NDJSON files of Patients: family FamNNNNN is shared by ten of them.
func writePatients(dir string, n int) ([]string, error) {
	var files []string
	const perFile = 5000
	for start := 0; start < n; start += perFile {
		name := filepath.Join(dir, fmt.Sprintf("patients-%03d.ndjson", start/perFile))
		f, err := os.Create(name)
		if err != nil {
			return nil, err
		}
		w := bufio.NewWriter(f)
		for i := start; i < min(start+perFile, n); i++ {
			g := "female"
			if i%2 == 1 {
				g = "male"
			}
			fmt.Fprintf(w, `{"resourceType":"Patient","id":"bench-%06d","identifier":[{"system":"urn:bench:mrn","value":"%d"}],"name":[{"use":"official","family":"Fam%05d","given":["Given%d","Middle"]}],"gender":"%s","birthDate":"19%02d-%02d-%02d","address":[{"line":["%d Main St"],"city":"Springfield","state":"IL","postalCode":"%05d"}],"telecom":[{"system":"phone","value":"555-%04d"}]}`+"\n",
				i, i, i%(n/10), i, g, 30+i%70, 1+i%12, 1+i%28, i%1000, 62700+i%100, i%10000)
		}
		if err := w.Flush(); err != nil {
			return nil, err
		}
		f.Close()
		files = append(files, name)
	}
	return files, nil
}

type wrkResult struct {
	rps      float64
	p50, p99 string
}

var (
	rpsRE = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	p50RE = regexp.MustCompile(`\s50%\s+(\S+)`)
	p99RE = regexp.MustCompile(`\s99%\s+(\S+)`)
	errRE = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

func runWrk(script, url, tok string, d time.Duration, conns int) (wrkResult, error) {
	cmd := exec.Command("taskset", "-c", "1", "wrk", "-t1", fmt.Sprintf("-c%d", conns), fmt.Sprintf("-d%ds", int(d.Seconds())),
		"--latency", "-s", script, "-H", "Authorization: Bearer "+tok, url)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %v: %s", err, out)
	}
	s := string(out)
	if m := errRE.FindStringSubmatch(s); m != nil {
		return wrkResult{}, fmt.Errorf("%s requests failed:\n%s", m[1], s)
	}
	var r wrkResult
	if m := rpsRE.FindStringSubmatch(s); m != nil {
		fmt.Sscanf(m[1], "%g", &r.rps)
	}
	if m := p50RE.FindStringSubmatch(s); m != nil {
		r.p50 = m[1]
	}
	if m := p99RE.FindStringSubmatch(s); m != nil {
		r.p99 = m[1]
	}
	return r, nil
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitReady(url string) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if res, err := http.Get(url); err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer", url)
}

func fetch(url, tok string) ([]byte, error) {
	req, _ := http.NewRequestWithContext(context.Background(), "GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, res.Status)
	}
	var b strings.Builder
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		b.Write(sc.Bytes())
	}
	return []byte(b.String()), sc.Err()
}

// memory reads a process's resident set and its peak, in kB.
func memory(pid int) (rss, hwm int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "VmRSS:" {
			fmt.Sscanf(f[1], "%d", &rss)
		}
		if len(f) >= 2 && f[0] == "VmHWM:" {
			fmt.Sscanf(f[1], "%d", &hwm)
		}
	}
	return rss, hwm
}

// childPid finds the carta process taskset started (taskset execs, so usually it is the same pid).
func childPid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return 0
	}
	var c int
	fmt.Sscanf(strings.TrimSpace(string(b)), "%d", &c)
	return c
}

// bare serves one file's bytes on the read route: the ceiling a FHIR handler in gin can reach.
func bare(addr, file string) {
	body, err := os.ReadFile(file)
	if err != nil {
		panic(err)
	}
	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.GET("/fhir/Patient/:id", func(c *gin.Context) { c.Data(http.StatusOK, "application/fhir+json; charset=utf-8", body) })
	if err := http.ListenAndServe(addr, r); err != nil {
		panic(err)
	}
}
