"""What people run: `speech-transformer` (`cli`, its exit codes in `exitcodes`), batch transcription
(`transcribe`, `transcribe_cli`, the file `writers`), WER benchmarks (`evaluate`, peer `systems`), the Gradio
demo (`demo`, `demo_commands`), Whisper import (`whisper_cli`)."""
