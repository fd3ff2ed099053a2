"""Personal data and sensitive words: what must not leave the process or reach the logs.

- `pii`: personal data (phone, ID, card, e-mail, landline, plate, address): detection and
  validation, `Masker` (stable placeholders per turn), the streaming `Unmasker`;
- `masking`: `MaskingEngine`, which wraps the model's engine so that it sees placeholders only;
- `logfilter`: the logging filter that masks personal data in every record at INFO or above;
- `sensitive`: the sensitive-word list (敏感词).
"""
