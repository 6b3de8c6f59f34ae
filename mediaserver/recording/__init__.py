"""Recording: the stream's CMAF fragments, as the segmenter made them, into crash-safe fMP4 files.

`recorder` decides what is recorded and when files roll over; `writer` does the file I/O in a thread of its
own; `fileformat` knows the bytes (the header box, the per-segment index beside each file, box scanning);
`repair` closes files a crash cut short. The index (database rows) belongs to the control plane, which
hears about files through `RecordingSink`.
"""
