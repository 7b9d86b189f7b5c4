package batch

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// outputLine is one line of a batch's output or error file, in OpenAI's shape.
type outputLine struct {
	ID       string          `json:"id"`
	CustomID string          `json:"custom_id"`
	Response *outputResponse `json:"response"`
	Error    *lineError      `json:"error"`
}

type outputResponse struct {
	StatusCode int             `json:"status_code"`
	RequestID  string          `json:"request_id"`
	Body       json.RawMessage `json:"body"`
}

// writeResults writes the batch's output file (served lines) and error
// file (every other line) from the line results, streaming: it reads the
// results once, in key order of the stream, and holds one line at a time.
// The files' ids follow from the batch's, so a driver that takes over an
// unfinished finalization writes the same files again. A file without
// lines is not kept (its id is nil).
func (s *Service) writeResults(ctx context.Context, r *record, customIDs []string) (out, errs *string, err error) {
	id := r.Batch.ID
	base := "file-" + strings.TrimPrefix(id, "batch_")
	outID, errID := base+"-output", base+"-errors"
	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	type put struct {
		f   *storedFile
		err error
	}
	outDone, errDone := make(chan put, 1), make(chan put, 1)
	go func() {
		f, err := s.putOutput(ctx, outID, r.Owner, id+"_output.jsonl", outR)
		outR.CloseWithError(err)
		outDone <- put{f, err}
	}()
	go func() {
		f, err := s.putOutput(ctx, errID, r.Owner, id+"_error.jsonl", errR)
		errR.CloseWithError(err)
		errDone <- put{f, err}
	}()
	nOut, nErr, werr := s.copyResults(ctx, id, customIDs, outW, errW)
	outW.CloseWithError(werr)
	errW.CloseWithError(werr)
	po, pe := <-outDone, <-errDone
	if err := errors.Join(werr, po.err, pe.err); err != nil {
		return nil, nil, err
	}
	keep := func(fid string, n int) (*string, error) {
		if n > 0 {
			return &fid, nil
		}
		if err := s.files.Delete(ctx, fid); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return nil, err
		}
		return nil, nil
	}
	if out, err = keep(outID, nOut); err != nil {
		return nil, nil, err
	}
	if errs, err = keep(errID, nErr); err != nil {
		return nil, nil, err
	}
	return out, errs, nil
}

// copyResults writes each line's result to out or errs.
func (s *Service) copyResults(ctx context.Context, id string, customIDs []string, out, errs io.Writer) (nOut, nErr int, err error) {
	ob, eb := bufio.NewWriterSize(out, 64<<10), bufio.NewWriterSize(errs, 64<<10)
	seen := make([]bool, len(customIDs))
	var werr error
	err = s.readLines(ctx, id, false, func(n int, v []byte) {
		if werr != nil || n < 0 || n >= len(customIDs) || seen[n] {
			return
		}
		seen[n] = true
		var res lineResult
		if werr = json.Unmarshal(v, &res); werr != nil {
			return
		}
		line := outputLine{ID: lineID(id, n), CustomID: customIDs[n], Error: res.Error}
		if res.Error == nil {
			line.Response = &outputResponse{StatusCode: res.Status, RequestID: res.RequestID, Body: res.Body}
		}
		dst := eb
		if stateOf(v) == lineOK {
			dst, nOut = ob, nOut+1
		} else {
			nErr++
		}
		werr = writeLine(dst, line)
	})
	if err = errors.Join(err, werr); err != nil {
		return 0, 0, err
	}
	for n, ok := range seen {
		if !ok { // cannot happen after a seal; kept out of neither file
			nErr++
			if err := writeLine(eb, outputLine{ID: lineID(id, n), CustomID: customIDs[n],
				Error: &lineError{Code: "batch_internal_error", Message: "the request's result was lost"}}); err != nil {
				return 0, 0, err
			}
		}
	}
	if err := ob.Flush(); err != nil {
		return 0, 0, err
	}
	return nOut, nErr, eb.Flush()
}

func lineID(id string, n int) string {
	return "batch_req_" + strings.TrimPrefix(requestID(id, n), "batch_")
}

func writeLine(w io.Writer, l outputLine) error {
	data, err := json.Marshal(l)
	if err != nil {
		return err
	}
	_, err = w.Write(append(data, '\n'))
	return err
}
