"""The plain nn.Modules: frame encoder, temporal encoders, caption decoder and the composed CaptionModel."""
