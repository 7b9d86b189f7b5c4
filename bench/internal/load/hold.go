package load

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// HoldResult is how the requests sent by Hold ended.
type HoldResult struct {
	Sent       int    `json:"sent"`
	OK         int    `json:"ok"`
	Failed     int    `json:"failed"`
	FirstError string `json:"first_error,omitempty"`
}

// Hold sends n copies of body to url, rate per second, each on its own
// connection and each waiting for its answer however long it takes (until
// ctx ends), and returns once every answer is in. It is meant to leave n
// requests waiting in a queue: the caller decides when the queue drains.
func Hold(ctx context.Context, url string, body []byte, n, rate int) (HoldResult, error) {
	if n < 1 || rate < 1 {
		return HoldResult{}, fmt.Errorf("load: hold needs n and rate of at least 1, got %d and %d", n, rate)
	}
	// Every waiting request needs its own connection, and closes it when
	// answered, so the server's side of it goes away with the queue.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DisableCompression: true}}
	var (
		mu  sync.Mutex
		res HoldResult
		wg  sync.WaitGroup
	)
	done := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			res.OK++
			return
		}
		res.Failed++
		if res.FirstError == "" {
			res.FirstError = err.Error()
		}
	}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	sent := 0
	for i := range n {
		if i > 0 {
			select {
			case <-tick.C:
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		sent++
		wg.Go(func() { done(post(ctx, client, url, body)) })
	}
	wg.Wait()
	res.Sent = sent
	return res, ctx.Err()
}

func post(ctx context.Context, client *http.Client, url string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}
