"""The media rates of every stream in the product: sources, features, engines, renderers, sinks.

Video runs at `FRAME_RATE` frames per second and audio at `SAMPLE_RATE` samples per second
(mono float32), so one video frame spans `SAMPLES_PER_FRAME` audio samples (40 ms). The official
model was trained at these rates; sources resample to them and sinks receive them.
"""

FRAME_RATE = 25  # video frames per second
SAMPLE_RATE = 16_000  # audio samples per second
SAMPLES_PER_FRAME = SAMPLE_RATE // FRAME_RATE  # 640 samples = 40 ms, one video frame
