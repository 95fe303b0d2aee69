// Package browsertest starts headless Chromium for tests of Carta's pages (sign-in, consent, the demo app).
package browsertest

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Chromium returns the Chromium binary (Debian's package; .ci/run installs it), or skips the test. When
// CARTA_TEST_CHROMIUM names a browser (as .ci/run does), a missing one fails the test instead.
func Chromium(t testing.TB) string {
	t.Helper()
	if want := os.Getenv("CARTA_TEST_CHROMIUM"); want != "" {
		p, err := exec.LookPath(want)
		if err != nil {
			t.Fatalf("CARTA_TEST_CHROMIUM=%s: %v", want, err)
		}
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no Chromium (apt-get install chromium); .ci/run installs it")
	return ""
}

// Open starts a fresh headless Chromium (its own profile, so no cookies carry over between tests) on the URL
// and returns a context for further steps, with a 60 s budget. The browser stops when the test ends.
func Open(t testing.TB, bin, start string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(bin), chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("no-first-run", true), chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	// The first call starts the browser and must not carry a timeout; later steps get one.
	if err := chromedp.Do(ctx, chromedp.Navigate(start)); err != nil {
		cancelCtx()
		cancelAlloc()
		t.Fatalf("browser: %v", err)
	}
	step, stop := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(func() { stop(); cancelCtx(); cancelAlloc() })
	return step
}

// Must fails the test with what was being done when a browser step fails.
func Must(t testing.TB, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}
